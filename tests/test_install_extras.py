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
