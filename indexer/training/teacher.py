"""MOS teacher for the partial mix-up pseudo-targets (paper 003, eq. 3-4).

Teacher used: **DNSMOS P.835** (overall quality, OVRL) from the ``speechmos`` package's ONNX file
``dnsmos_models/sig_bak_ovr.onnx``, run directly with onnxruntime on one thread (the package's
own wrapper also runs the P.808 model through librosa, which we do not need). It is fast (~20-40
ms per 4 s clip) and fully offline. The full distillmos model is not used as teacher: its
package imports torchaudio (not installable next to torch 2.13) and its transformer needs
7.68 s windows, which would cost several times more per example than this data budget allows.

Eq. 3-4: with the frame mask m_l (1 inside degraded regions), the utterance scores of the clean
clip q_ref and of the fully degraded clip q_deg give per-frame targets
``q_pseudo_l = m_l q_deg + (1 - m_l) q_ref``; the utterance target is their mean (003 sec. 3).
DNSMOS gives utterance scores, so q_ref and q_deg are constant over frames. With several
degradations in one example, each region uses the score of its own degraded version.

Scores are cached per key (e.g. ``(utterance path, clip offset, channel)`` for clean clips);
:class:`TeacherCache` can persist them as JSON lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from indexer.errors import ModelError

SR = 16000
_INPUT_LEN = int(9.01 * SR)


def _dnsmos_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("speechmos")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the speechmos package is not installed", "pip install speechmos (it ships the DNSMOS ONNX files)")
    path = Path(list(spec.submodule_search_locations)[0]) / "dnsmos_models" / "sig_bak_ovr.onnx"
    if not path.exists():
        raise ModelError(f"DNSMOS model missing at {path}", "reinstall speechmos")
    return path


class DNSMOSTeacher:
    """DNSMOS P.835 OVRL utterance MOS (1..5) for 16 kHz float32 clips, with a score cache."""

    name = "dnsmos-p835-ovrl"

    def __init__(self, cache: "TeacherCache | None" = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(_dnsmos_path()), opts, providers=["CPUExecutionProvider"])
        self.cache = cache or TeacherCache()

    def score(self, x: np.ndarray, key: str | None = None) -> float:
        """Utterance MOS of ``x``; clips shorter than 9.01 s are tiled (as the DNSMOS reference does)."""
        if key is not None and key in self.cache:
            return self.cache[key]
        x = np.asarray(x, dtype=np.float32)
        if x.size == 0 or not np.any(x):
            mos = 1.0
        else:
            y = np.tile(x, int(np.ceil(_INPUT_LEN / x.size)))[:_INPUT_LEN] if x.size < _INPUT_LEN else x[:_INPUT_LEN]
            y = np.clip(y, -1.0, 1.0)[None, :]
            _sig, _bak, ovr = self.session.run(None, {"input_1": y})[0][0]
            mos = float(np.clip(np.poly1d([-0.06766283, 1.11546468, 0.04602535])(ovr), 1.0, 5.0))
        if key is not None:
            self.cache[key] = mos
        return mos


def pseudo_targets(frame_mask: np.ndarray, q_ref: float, q_deg: float | np.ndarray) -> tuple[np.ndarray, float]:
    """Eq. 4: per-frame targets ``m q_deg + (1 - m) q_ref`` and their mean as the utterance target.

    ``q_deg`` may be a per-frame array (regions from different degraded versions).
    """
    m = np.asarray(frame_mask, dtype=np.float32)
    q = m * np.asarray(q_deg, dtype=np.float32) + (1.0 - m) * np.float32(q_ref)
    q = q.astype(np.float32)
    return q, float(q.mean()) if q.size else float(q_ref)


class TeacherCache(dict):
    """A ``dict`` of key -> MOS that can load from and append to a JSON-lines file."""

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        self.path = Path(path) if path else None
        self._pending: list[tuple[str, float]] = []
        if self.path and self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    k, v = json.loads(line)
                    super().__setitem__(k, float(v))

    def __setitem__(self, key: str, value: float) -> None:
        super().__setitem__(key, value)
        self._pending.append((key, value))

    def flush(self) -> None:
        """Append new entries to the file (no-op without a path)."""
        if self.path and self._pending:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.writelines(json.dumps([k, v]) + "\n" for k, v in self._pending)
        self._pending.clear()
