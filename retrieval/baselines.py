"""Baselines scored on the same benchmark as the frame model, so a report shows what it adds.

(a) **DNSMOS** (P.835, ``speechmos``'s ``dnsmos_models/sig_bak_ovr.onnx``), the approach of paper
    000: an SQA network's latent space clusters impairments. It is used twice:

    * as a *detector*: the OVRL MOS of a sliding window around every frame, low MOS = degraded;
    * as an *embedding*: its penultimate layer (64-d ReLU output of ``dense_1``) over a segment.

    The ONNX graph is edited when loaded (``onnx`` package): the input length is made free (the
    two crops and reshapes that fix 9.01 s become length-independent) and the last convolution map,
    just before DNSMOS's global max pooling, is exposed as an extra output. The network is
    convolutional up to that pooling, so one pass over a file gives a (time, channel) map at 80 ms
    steps; max-pooling it over any window and applying the dense head (the model's own weights, in
    numpy) gives exactly what DNSMOS computes for that window's map, for every window at once, instead
    of one 9 s inference per window (which would take hours on a 30-minute benchmark).

(b) **Log-mel statistics**: per segment the mean and standard deviation of 64 log-mel bands
    (25 ms Hann windows, 10 ms hop), z-scored with statistics of the enroll split, as embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.errors import ModelError
from indexer.training.teacher import dnsmos_model_path
from retrieval.evaluation import frame_centres, normalize_rows

SR = 16000
_DNSMOS_HOP_S = 0.01  # DNSMOS frames: 320-sample windows every 160 samples
_DNSMOS_POOL = 8  # three 2x2 max pools between the STFT frames and the last conv map
_DNSMOS_MIN_SAMPLES = 160 * 8 * 4  # 0.32 s: the convs and three pools need a few 80 ms steps
_P835_OVR_POLY = (-0.06766283, 1.11546468, 0.04602535)  # speechmos' non-personalised OVRL mapping
_MAP_OUTPUT = "push_transpose_out_0"  # (N, T/8, F/8, C) map right before global max pooling
_HEAD = (  # (weight, bias) initializers of the dense head, in order
    ("mos_estimator_logpow/dense/MatMul/ReadVariableOp/resource:0", "mos_estimator_logpow/dense/BiasAdd/ReadVariableOp/resource:0"),
    ("mos_estimator_logpow/dense_1/MatMul/ReadVariableOp/resource:0", "mos_estimator_logpow/dense_1/BiasAdd/ReadVariableOp/resource:0"),
    ("mos_estimator_logpow/dense_3/MatMul/ReadVariableOp/resource:0", "mos_estimator_logpow/dense_3/BiasAdd/ReadVariableOp/resource:0"),
)


@dataclass
class DNSMOSMap:
    """DNSMOS's last conv map of one signal, max-pooled over frequency: (T', C) at ``hop_s`` steps."""

    features: np.ndarray
    hop_s: float

    def __len__(self) -> int:
        return int(self.features.shape[0])


class DNSMOSBaseline:
    """DNSMOS P.835 as frame detector and segment embedder (see the module docstring)."""

    name = "dnsmos"
    dim = 64

    def __init__(self, path: str | Path | None = None, *, window_s: float = 1.0, chunk_s: float = 30.0) -> None:
        """``window_s``: length of the window whose MOS scores a frame; ``chunk_s``: longest piece
        fed to the network at once (bounds memory on long files)."""
        import onnxruntime as ort

        try:
            import onnx
            from onnx import numpy_helper
        except ImportError as exc:  # pragma: no cover - declared in pyproject
            raise ModelError("the onnx package is needed to expose DNSMOS's penultimate layer", "pip install onnx") from exc
        model = onnx.load(str(path or dnsmos_model_path()))
        inits = {t.name: t for t in model.graph.initializer}
        try:
            self._head = [(numpy_helper.to_array(inits[w]).astype(np.float32), numpy_helper.to_array(inits[b]).astype(np.float32))
                          for w, b in _HEAD]
            # Free the input length: crop [0, L - 160) and [160, L) instead of fixed 144000-sample
            # ends, and reshape to (N, -1, 160) (0 = copy N) instead of (-1, 900, 160).
            inits["input_1:01_cropping_end"].CopyFrom(numpy_helper.from_array(
                np.array([np.iinfo(np.int64).max, -160], np.int64), "input_1:01_cropping_end"))
            for name in ("shape_tensor", "shape_tensor1"):
                inits[name].CopyFrom(numpy_helper.from_array(np.array([0, -1, 160], np.int64), name))
        except KeyError as exc:
            raise ModelError(f"the DNSMOS graph lacks {exc}: not the expected sig_bak_ovr.onnx",
                             "reinstall speechmos==0.0.1.1") from exc
        model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "samples"
        model.graph.output.append(onnx.helper.make_tensor_value_info(_MAP_OUTPUT, onnx.TensorProto.FLOAT, None))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.window_s = float(window_s)
        self.chunk_s = float(chunk_s)
        self.hop_s = _DNSMOS_HOP_S * _DNSMOS_POOL

    # -- network ----------------------------------------------------------------------------------
    def analyse(self, samples: np.ndarray) -> DNSMOSMap:
        """Run the conv stack over a mono 16 kHz signal; returns the frequency-pooled map.

        The signal goes through in ``chunk_s`` pieces (a short tail joins the previous piece);
        each piece is zero-padded to whole 80 ms steps. Signals shorter than the network's minimum
        are tiled first, as DNSMOS's reference code does for clips under 9 s.
        """
        x = np.clip(np.asarray(samples, dtype=np.float32).ravel(), -1.0, 1.0)
        step = 160 * _DNSMOS_POOL
        n_pos = max(1, int(np.ceil(x.size / step)))
        if x.size < _DNSMOS_MIN_SAMPLES:
            base = x if np.any(x) else np.zeros(1, np.float32)
            tiled = np.tile(base, int(np.ceil(_DNSMOS_MIN_SAMPLES / base.size)))[:_DNSMOS_MIN_SAMPLES]
            return DNSMOSMap(self._run(tiled)[:n_pos], self.hop_s)  # tiled: always >= n_pos steps
        chunk = max(step, int(self.chunk_s * SR) // step * step)
        starts = list(range(0, x.size, chunk))
        if len(starts) > 1 and x.size - starts[-1] < _DNSMOS_MIN_SAMPLES:
            starts.pop()
        maps = []
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else x.size
            maps.append(self._run(x[start:end + 160]))
        features = np.concatenate(maps, axis=0)[:n_pos]
        if len(features) < n_pos:  # the trimmed tail takes the last step's features
            features = np.concatenate([features, np.repeat(features[-1:], n_pos - len(features), axis=0)])
        return DNSMOSMap(features, self.hop_s)

    def _run(self, piece: np.ndarray) -> np.ndarray:
        # The graph frames [0, L-160) and [160, L) into 160-sample halves: L - 160 must be a
        # multiple of 160, and of 8 * 160 for the pools to use every frame. Trim the tail (< 80 ms)
        # rather than pad it: zero padding is digital silence, whose floor-level log power DNSMOS
        # maps to strong activations; the caller repeats the last step for the trimmed tail.
        step = 160 * _DNSMOS_POOL
        piece = piece[: (piece.size - 160) // step * step + 160].astype(np.float32)
        _, fmap = self._session.run(None, {"input_1": piece[None, :]})
        return fmap[0].max(axis=1)  # (T', F', C) -> (T', C): the frequency half of global max pooling

    def head(self, pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dense head on pooled (n, C) features: ``(penultimate (n, 64), OVRL MOS (n,))``."""
        (w0, b0), (w1, b1), (w2, b2) = self._head
        h = np.maximum(pooled @ w0 + b0, 0.0)
        penultimate = np.maximum(h @ w1 + b1, 0.0)
        raw_ovr = (penultimate @ w2 + b2)[:, 2]
        mos = np.clip(np.polyval(_P835_OVR_POLY, raw_ovr), 1.0, 5.0)
        return penultimate.astype(np.float32), mos.astype(np.float32)

    # -- detector -------------------------------------------------------------------------------
    def frame_mos(self, fmap: DNSMOSMap, n_frames: int, hop_s: float) -> np.ndarray:
        """OVRL MOS of a ``window_s`` window centred on each of ``n_frames`` frames of ``hop_s``."""
        from scipy.ndimage import maximum_filter1d

        width = max(1, int(round(self.window_s / fmap.hop_s)))
        pooled = maximum_filter1d(fmap.features, size=width, axis=0, mode="nearest")
        _, mos = self.head(pooled)
        pos = np.clip((frame_centres(n_frames, hop_s) / fmap.hop_s).astype(np.int64), 0, len(fmap) - 1)
        return mos[pos]

    # -- embedding -----------------------------------------------------------------------------
    def segment_embeddings(self, fmap: DNSMOSMap, intervals: list[tuple[float, float]]) -> np.ndarray:
        """Penultimate-layer embedding of each interval (global max pool over its span), L2-normalised."""
        if not intervals:
            return np.zeros((0, self.dim), np.float32)
        pooled = np.empty((len(intervals), fmap.features.shape[1]), np.float32)
        for i, (start, end) in enumerate(intervals):
            lo = min(int(start / fmap.hop_s), len(fmap) - 1)
            hi = min(max(lo + 1, int(np.ceil(end / fmap.hop_s))), len(fmap))
            pooled[i] = fmap.features[lo:hi].max(axis=0)
        emb, _ = self.head(pooled)
        return normalize_rows(emb)


# --- log-mel statistics -------------------------------------------------------------------------


def mel_filterbank(n_mels: int = 64, n_fft: int = 400, sr: int = SR, fmin: float = 20.0, fmax: float | None = None) -> np.ndarray:
    """Triangular HTK-mel filterbank, (n_mels, n_fft // 2 + 1)."""
    fmax = fmax or sr / 2

    def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lower) / np.maximum(centre - lower, 1e-9)
    down = (upper - freqs[None, :]) / np.maximum(upper - centre, 1e-9)
    return np.clip(np.minimum(up, down), 0.0, None).astype(np.float32)


class LogMelBaseline:
    """Mean and std of log-mel bands per segment, z-scored (fit on the enroll split), as embeddings."""

    name = "logmel"

    def __init__(self, n_mels: int = 64, win_s: float = 0.025, hop_s: float = 0.01) -> None:
        self.n_mels = n_mels
        self.win = int(round(win_s * SR))
        self.hop = int(round(hop_s * SR))
        self.hop_s = self.hop / SR
        self.n_fft = self.win
        self._fb = mel_filterbank(n_mels, self.n_fft)
        self._window = np.hanning(self.win).astype(np.float32)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return 2 * self.n_mels

    def features(self, samples: np.ndarray) -> np.ndarray:
        """(T, n_mels) log-mel energies of a mono 16 kHz signal; frame t centred at (t + 0.5) * hop."""
        x = np.asarray(samples, dtype=np.float32).ravel()
        pad = self.win // 2
        x = np.pad(x, (pad, pad + self.win))
        n = max(1, (x.size - self.win) // self.hop)
        n = min(n, int(np.ceil(len(samples) / self.hop))) or 1
        idx = np.arange(self.win)[None, :] + self.hop * np.arange(n)[:, None] + self.hop // 2
        frames = x[np.clip(idx, 0, x.size - 1)] * self._window
        power = np.abs(np.fft.rfft(frames, n=self.n_fft, axis=1)) ** 2
        return np.log(power @ self._fb.T + 1e-8).astype(np.float32)

    def segment_stats(self, feats: np.ndarray, intervals: list[tuple[float, float]]) -> np.ndarray:
        """(n, 2 * n_mels) raw statistics (mean, std) of each interval's frames (before z-scoring)."""
        out = np.zeros((len(intervals), self.dim), np.float32)
        centres = frame_centres(len(feats), self.hop_s)
        for i, (start, end) in enumerate(intervals):
            lo, hi = np.searchsorted(centres, [start, end])
            if hi <= lo:  # shorter than a frame: the frame holding its midpoint
                lo = min(int((start + end) / 2 / self.hop_s), len(feats) - 1)
                hi = lo + 1
            seg = feats[lo:hi]
            out[i] = np.r_[seg.mean(axis=0), seg.std(axis=0)]
        return out

    def fit(self, stats: np.ndarray) -> LogMelBaseline:
        """Learn the z-score from (enroll) statistics rows."""
        stats = np.asarray(stats, dtype=np.float64)
        if stats.shape[0] == 0:
            raise ModelError("no segments to fit the log-mel z-score on", "give the enroll split some events")
        self.mean = stats.mean(axis=0).astype(np.float32)
        self.std = np.maximum(stats.std(axis=0), 1e-6).astype(np.float32)
        return self

    def embed(self, stats: np.ndarray) -> np.ndarray:
        """z-scored, L2-normalised embeddings of statistics rows (call :meth:`fit` first)."""
        if self.mean is None or self.std is None:
            raise ModelError("the log-mel baseline has no z-score yet", "call fit() on the enroll-split statistics first")
        return normalize_rows((np.asarray(stats, np.float32) - self.mean) / self.std)
