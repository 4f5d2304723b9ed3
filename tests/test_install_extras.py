"""pyproject's [cpu]/[cuda] extras (issue 31 item 1) pin the triplet scripts/setup_env.sh installs
(requirements/*.txt), and [cpu] leaves out torchrec, whose dependency on the distribution
`fbgemm-gpu` would make pip add the CUDA build beside fbgemm-gpu-cpu. Checked by hand: a fresh
venv with `pip install '.[cpu]'` + `pip install --no-deps torchrec==1.8.0` imports mlet_dist and
runs mlet-train outside the checkout; `pip install --dry-run '.[cuda]'` resolves the triplet."""

import tomllib

from dist_launch import ROOT


def _pins(lines) -> dict:
    """{normalised name: version} of `name==version` lines (comments skipped)."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def test_extras_pin_the_verified_triplets() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    base = _pins(project["dependencies"])
    common = _pins((ROOT / "requirements" / "common.txt").read_text().splitlines())
    for flavour in ("cpu", "cuda"):
        wanted = _pins((ROOT / "requirements" / f"{flavour}.txt").read_text().splitlines())
        given = {**base, **_pins(extras[flavour])}
        assert {name: given.get(name) for name in wanted} == wanted, flavour  # torch + fbgemm
        for name in ("tensordict", "pyre-extensions", "iopath"):  # torchrec's own requirements
            assert given[name] == common[name], (flavour, name)
    assert _pins(extras["cuda"])["torchrec"] == common["torchrec"]
    cpu = _pins(extras["cpu"])
    assert "torchrec" not in cpu and "fbgemm-gpu" not in cpu  # pip would add CUDA fbgemm-gpu
    assert all(base[name] == common[name] for name in base if name in common)


def test_setup_installs_torchrec_after_every_resolving_pip_install() -> None:
    """scripts/setup_env.sh: pip's conflict check, which runs on every install that resolves
    dependencies, printed "ERROR: ... torchrec 1.8.0 requires fbgemm-gpu" on CPU whenever torchrec
    was already there; torchrec goes in last, with --no-deps (no check), and no ERROR is printed."""
    lines = [line.strip() for line in (ROOT / "scripts" / "setup_env.sh").read_text().splitlines()]
    pip = [i for i, line in enumerate(lines) if '"${PIP[@]}"' in line and not line.startswith("PIP=")]
    torchrec = [i for i in pip if "^torchrec==" in lines[i] and "--no-deps" in lines[i]]
    resolving = [i for i in pip if "--no-deps" not in lines[i]]
    assert len(torchrec) == 1 and resolving and max(resolving) < torchrec[0], [lines[i] for i in pip]
    assert not any("expected above" in line for line in lines)
