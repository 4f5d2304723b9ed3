"""Sharding plans: JSON round trip and checks against a model and a job."""

from mlet_dist.planning.plan_io import PlanMismatchError, check_plan_fits, load_plan, save_plan

__all__ = ["PlanMismatchError", "check_plan_fits", "load_plan", "save_plan"]
