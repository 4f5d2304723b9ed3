"""Diagnostics: spectra of the MLET projections and tables, per-example predictions.

With ``--diagnostics`` the spectra of the projections W are logged at every evaluation point
(``projection_spectra``: a "spectra" event in metrics.jsonl, TensorBoard tags
``projection_effective_rank/<table>``) and the full set (W, T, collapsed T·W) at the end.

Spectra. For a matrix A with singular values s_1 >= ... >= s_m >= 0:

* ``effective_rank`` = exp(H(p)), p_i = s_i / sum(s), H the Shannon entropy (Roy & Vetterli,
  2007): m for a flat spectrum, 1 for rank one, continuous in between;
* ``stable_rank`` = sum(s²) / s_1² (<= the rank, insensitive to tiny singular values);
* ``rank_above_threshold`` = #{i : s_i > rel_tol · s_1} (default rel_tol = 1e-2).

Per MLET table with wide table T (n×k) and projection W (k×d) they are reported for W, for the
collapsed serving table T·W (n×d) and for T; per baseline table for the n×d table. T·W is never
materialised: its singular values are the square roots of the eigenvalues of Wᵀ(TᵀT)W, and
TᵀT is accumulated in row chunks (O(n·k²) time, O(k²) extra memory, float64), so tables of
millions of rows are fine. Rows that training never touched keep their initial values and count
like the others; pass ``row_weights`` (e.g. train id counts) for a frequency-weighted spectrum.

Predictions. ``save_predictions`` writes one compressed ``<split>.npz`` per split with ``row``
(the row index in the split, file order), ``prob`` (float32) and ``label`` (int8): what the
sweep report needs for its rare-item analysis (``mlet_dist.sweep.rare_items``). About 4 bytes
per row after compression (Criteo Kaggle's test split: ~13 MB).
"""

import math
import re
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]
Spectrum = Union[Sequence[float], np.ndarray]  # singular values, largest first
DEFAULT_REL_TOL = 1e-2
CHUNK_ROWS = 65536

_WIDE = re.compile(r"^(?:(?P<prefix>.*)\.)?wide\.embedding_bags\.(?P<table>[^.]+)\.weight$")
_PROJECTION = re.compile(r"^(?:(?P<prefix>.*)\.)?projections\.(?P<table>[^.]+)\.weight$")
_TABLE = re.compile(r"^(?:(?P<prefix>.*)\.)?embedding_bags\.(?P<table>[^.]+)\.weight$")


def _as_tensor(a: ArrayLike) -> torch.Tensor:
    t = torch.as_tensor(a) if isinstance(a, np.ndarray) else a
    return t.detach().to("cpu", torch.float64)


def _gram(a: ArrayLike, row_weights: Optional[ArrayLike] = None, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """AᵀA (or Aᵀ diag(w) A), accumulated over row chunks in float64."""
    a_t = a if isinstance(a, torch.Tensor) else torch.as_tensor(a)
    w = None if row_weights is None else _as_tensor(row_weights).reshape(-1)
    if w is not None and w.numel() != a_t.shape[0]:
        raise ValueError(f"row_weights has {w.numel()} entries for {a_t.shape[0]} rows")
    g = torch.zeros(a_t.shape[1], a_t.shape[1], dtype=torch.float64)
    for start in range(0, a_t.shape[0], chunk_rows):
        block = _as_tensor(a_t[start : start + chunk_rows])
        if w is not None:
            g += block.T @ (block * w[start : start + chunk_rows, None])
        else:
            g += block.T @ block
    return g


def _sqrt_eig_desc(sym: torch.Tensor) -> np.ndarray:
    ev = torch.linalg.eigvalsh(0.5 * (sym + sym.T)).clamp_min(0).sqrt()
    return ev.flip(0).numpy()


def singular_values(matrix: ArrayLike, row_weights: Optional[ArrayLike] = None) -> np.ndarray:
    """Singular values, descending (float64). Exact SVD for small matrices, the Gram matrix for
    tall ones (then values below ~1e-8 · s_1 are not resolved, which the ranks below ignore)."""
    m = matrix if isinstance(matrix, torch.Tensor) else torch.as_tensor(matrix)
    if m.dim() != 2:
        raise ValueError(f"expected a 2-d matrix, got shape {tuple(m.shape)}")
    if row_weights is None and m.shape[0] * m.shape[1] <= 1 << 22:
        return torch.linalg.svdvals(_as_tensor(m)).numpy()
    return _sqrt_eig_desc(_gram(m, row_weights))


def collapsed_singular_values(
    table: ArrayLike, projection: ArrayLike, row_weights: Optional[ArrayLike] = None
) -> np.ndarray:
    """Singular values of T·W (n×d) from T (n×k) and W (k×d), without forming T·W."""
    w = _as_tensor(projection)
    if table.shape[1] != w.shape[0]:
        raise ValueError(f"table {tuple(table.shape)} and projection {tuple(w.shape)} do not chain")
    return _sqrt_eig_desc(w.T @ _gram(table, row_weights) @ w)


def effective_rank(values: Spectrum) -> float:
    """exp(entropy of s / sum(s)); 0 for an all-zero spectrum."""
    s = np.asarray(values, np.float64)
    total = s.sum()
    if not total > 0:
        return 0.0
    p = s[s > 0] / total
    return float(math.exp(-(p * np.log(p)).sum()))


def stable_rank(values: Spectrum) -> float:
    s = np.asarray(values, np.float64)
    return float((s**2).sum() / s.max() ** 2) if len(s) and s.max() > 0 else 0.0


def rank_above_threshold(values: Spectrum, rel_tol: float = DEFAULT_REL_TOL) -> int:
    s = np.asarray(values, np.float64)
    return int((s > rel_tol * s.max()).sum()) if len(s) and s.max() > 0 else 0


def spectrum_summary(values: Spectrum, rel_tol: float = DEFAULT_REL_TOL) -> Dict[str, object]:
    s = np.asarray(values, np.float64)
    return {
        "singular_values": [float(x) for x in s],
        "effective_rank": effective_rank(s),
        "stable_rank": stable_rank(s),
        "rank_above_threshold": rank_above_threshold(s, rel_tol),
    }


def projection_diagnostics(
    projection: ArrayLike,
    collapsed: Optional[ArrayLike] = None,
    wide: Optional[ArrayLike] = None,
    row_weights: Optional[ArrayLike] = None,
    rel_tol: float = DEFAULT_REL_TOL,
) -> Dict[str, object]:
    """Spectra of W (k×d) and of the collapsed table: pass it as ``collapsed`` (n×d), or pass
    the wide table T (n×k) as ``wide`` and it is computed as T·W implicitly (T's own spectrum
    is then reported too)."""
    w = _as_tensor(projection)
    out: Dict[str, object] = {
        "inner_dim": int(w.shape[0]),
        "embedding_dim": int(w.shape[1]),
        "projection": spectrum_summary(singular_values(w), rel_tol),
    }
    if collapsed is not None:
        out["rows"] = int(collapsed.shape[0])
        out["table"] = spectrum_summary(singular_values(collapsed, row_weights), rel_tol)
    elif wide is not None:
        out["rows"] = int(wide.shape[0])
        out["table"] = spectrum_summary(collapsed_singular_values(wide, w, row_weights), rel_tol)
        out["wide"] = spectrum_summary(singular_values(wide, row_weights), rel_tol)
    return out


def table_diagnostics(
    table: ArrayLike, row_weights: Optional[ArrayLike] = None, rel_tol: float = DEFAULT_REL_TOL
) -> Dict[str, object]:
    """Spectrum of a plain n×d table (baseline, or an already collapsed one)."""
    return {
        "rows": int(table.shape[0]),
        "inner_dim": None,
        "embedding_dim": int(table.shape[1]),
        "table": spectrum_summary(singular_values(table, row_weights), rel_tol),
    }


def diagnostics_from_state_dict(
    state: Mapping[str, torch.Tensor],
    row_weights: Optional[Mapping[str, ArrayLike]] = None,
    rel_tol: float = DEFAULT_REL_TOL,
) -> Dict[str, object]:
    """Diagnostics of every embedding table in a full (gathered, unsharded-layout) state dict,
    e.g. ``mlet_dist.distributed.state.gather_full_state_dict(model)``: MLET tables are found as
    ``*.wide.embedding_bags.<t>.weight`` + ``*.projections.<t>.weight``, stock tables as
    ``*.embedding_bags.<t>.weight``. ``row_weights`` maps table name -> per-row weights.

    Returns {"tables": {name: ...}, "mean": {...}, "rel_tol": ...} (JSON-serialisable)."""
    wide, proj, plain = {}, {}, {}
    for name, tensor in state.items():
        if (m := _WIDE.match(name)) is not None:
            wide[(m["prefix"], m["table"])] = tensor
        elif (m := _PROJECTION.match(name)) is not None:
            proj[(m["prefix"], m["table"])] = tensor
        elif (m := _TABLE.match(name)) is not None:
            plain[m["table"]] = tensor
    tables: Dict[str, Dict[str, object]] = {}
    for key, t in sorted(wide.items()):
        if key not in proj:
            raise ValueError(f"wide table {key[1]} has no projection in the state dict")
        weights = None if row_weights is None else row_weights.get(key[1])
        tables[key[1]] = projection_diagnostics(proj[key], wide=t, row_weights=weights, rel_tol=rel_tol)
    for table, t in sorted(plain.items()):
        if table not in tables:
            weights = None if row_weights is None else row_weights.get(table)
            tables[table] = table_diagnostics(t, weights, rel_tol)
    return {"tables": tables, "mean": _means(tables), "rel_tol": rel_tol}


def diagnostics_from_grams(
    grams: Mapping[str, Tuple[torch.Tensor, int]],
    projections: Mapping[str, ArrayLike],
    rel_tol: float = DEFAULT_REL_TOL,
) -> Dict[str, object]:
    """Same result as ``diagnostics_from_state_dict`` from each table's Gram matrix TᵀT (and row
    count) and the projections W alone: what a sharded model can produce without any rank ever
    holding a whole table (``distributed/table_grams.py``). Keys as in a state dict."""
    proj = {m["table"]: w for name, w in projections.items() if (m := _PROJECTION.match(name)) is not None}
    tables: Dict[str, Dict[str, object]] = {}
    for name, (gram, rows) in sorted(grams.items()):
        g = gram.to(torch.float64)
        if (m := _WIDE.match(name)) is not None:
            w = _as_tensor(proj[m["table"]])
            tables[m["table"]] = {
                "inner_dim": int(w.shape[0]),
                "embedding_dim": int(w.shape[1]),
                "rows": rows,
                "projection": spectrum_summary(singular_values(w), rel_tol),
                "table": spectrum_summary(_sqrt_eig_desc(w.T @ g @ w)[: min(rows, w.shape[1])], rel_tol),
                "wide": spectrum_summary(_sqrt_eig_desc(g)[: min(rows, g.shape[0])], rel_tol),
            }
        elif (m := _TABLE.match(name)) is not None and m["table"] not in tables:
            tables[m["table"]] = {
                "rows": rows,
                "inner_dim": None,
                "embedding_dim": int(g.shape[0]),
                "table": spectrum_summary(_sqrt_eig_desc(g)[: min(rows, g.shape[0])], rel_tol),
            }
    return {"tables": tables, "mean": _means(tables), "rel_tol": rel_tol}


def _means(tables: Mapping[str, Mapping[str, object]]) -> Dict[str, float]:
    mean: Dict[str, float] = {}
    for part in ("table", "projection", "wide"):
        for stat in ("effective_rank", "stable_rank", "rank_above_threshold"):
            values = [v[part][stat] for v in tables.values() if part in v]  # type: ignore[index]
            if values:
                mean[f"{part}_{stat}"] = float(np.mean(values))
    return mean


def is_table_key(name: str) -> bool:
    """Embedding table weights (wide MLET tables or stock tables), not projections."""
    return _PROJECTION.match(name) is None and (_WIDE.match(name) is not None or _TABLE.match(name) is not None)


def is_projection_key(name: str) -> bool:
    return _PROJECTION.match(name) is not None


def projection_spectra(state: Mapping[str, torch.Tensor], rel_tol: float = DEFAULT_REL_TOL) -> Dict[str, object]:
    """Spectra of the projections W alone (k×d each: cheap enough for every evaluation point),
    to follow during training how far each W stays from a flat spectrum.

    Returns {"effective_rank": {table: ...}, "stable_rank": {table: ...}, "singular_values":
    {table: [...]}, "effective_rank_mean": ...}; empty when the model has no MLET tables."""
    spectra = {
        m["table"]: spectrum_summary(singular_values(t), rel_tol)
        for name, t in sorted(state.items())
        if (m := _PROJECTION.match(name)) is not None
    }
    if not spectra:
        return {}
    return {
        "effective_rank": {t: v["effective_rank"] for t, v in spectra.items()},
        "stable_rank": {t: v["stable_rank"] for t, v in spectra.items()},
        "singular_values": {t: v["singular_values"] for t, v in spectra.items()},
        "effective_rank_mean": float(np.mean([v["effective_rank"] for v in spectra.values()])),
    }


# ----------------------------------------------------------------------------
# Per-example predictions
# ----------------------------------------------------------------------------

PREDICTIONS_DIR = "predictions"


def save_predictions(directory: Path, splits: Mapping[str, object]) -> Dict[str, Path]:
    """``splits``: split -> object with ``probs`` and ``labels`` (1-d, file order; e.g.
    ``mlet_dist.training.evaluation.Predictions``). Writes ``directory/<split>.npz``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, preds in splits.items():
        probs = _as_tensor(preds.probs).to(torch.float32).numpy().reshape(-1)  # type: ignore[attr-defined]
        labels = _as_tensor(preds.labels).to(torch.int8).numpy().reshape(-1)  # type: ignore[attr-defined]
        path = directory / f"{split}.npz"
        tmp = directory / f".{split}.tmp.npz"
        np.savez_compressed(tmp, row=np.arange(len(probs), dtype=np.int64), prob=probs, label=labels)
        tmp.replace(path)
        written[split] = path
    return written


def load_predictions(path: Path) -> Dict[str, np.ndarray]:
    """``row`` (int64), ``prob`` (float32), ``label`` (int8) of one ``<split>.npz``."""
    with np.load(Path(path)) as f:
        out = {k: f[k] for k in ("row", "prob", "label")}
    if not len(out["row"]) == len(out["prob"]) == len(out["label"]):
        raise ValueError(f"{path}: row/prob/label lengths differ")
    return out
