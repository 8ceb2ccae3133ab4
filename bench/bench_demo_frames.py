"""Frame-level detection on the demo archive, per model: how far clean calls and each planted
degradation sit from the archive's own clean enrollment.

    .venv/bin/python bench/bench_demo_frames.py [--model fast] [--model data/models/runs/x.pt] [--out degsearch-demo]

For each model: the clean enrollment and threshold that `degsearch demo` computes from the two
reference calls (`indexer.enrollment.enrollment_from_clips`), the reference frames' score quantiles (how
heavy the clean tail is), the archive's frame EER (planted stretches against everything else), and per
degradation the share of its frames over the threshold and their median score. Frame scores are
1 - cosine to the enrollment, median-smoothed as detection smooths them. A recipe that widens the
clean tail loses detections here even when its benchmark frame EER is better; compare recipes with
this as well as with bench_model.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.ndimage import median_filter

from indexer.audio import load_audio
from indexer.demo import DEGRADATIONS, generate_demo_archive
from indexer.detect import frame_scores
from indexer.model import load_model
from indexer.enrollment import enrollment_from_clips
from indexer.settings import MODEL_CHOICES, get_settings
from retrieval.evaluation import equal_error_rate


def demo_frame_figures(model_name: str, out_dir: Path, smooth_frames: int, quantile: float) -> dict[str, float]:
    """The figures printed for one model (see the module docstring)."""
    manifest = generate_demo_archive(out_dir)
    events = json.loads((manifest.parent / "planted.json").read_text())["events"]
    model = load_model(model_name)
    enrollment = enrollment_from_clips(model, sorted(str(p) for p in (out_dir / "reference").glob("*.wav")),
                                       quantile=quantile, smooth_frames=smooth_frames)
    ref = enrollment.scores
    scores, kinds = [], []
    for path in sorted(manifest.parent.glob("call_*")):
        for channel, out in enumerate(model.embed_batch(list(load_audio(path).samples))):
            s = median_filter(frame_scores(out.embeddings, enrollment.vector), size=smooth_frames, mode="nearest")
            centre = (np.arange(len(s)) + 0.5) * out.hop_s
            kind = np.full(len(s), "none", dtype=object)
            for e in events:
                if e["path"] == path.name and e["channel"] == channel:
                    kind[(centre >= e["start_s"]) & (centre < e["end_s"])] = e["kind"]
            scores.append(s)
            kinds.append(kind)
    s, kind = np.concatenate(scores), np.concatenate(kinds)
    degraded = kind != "none"
    figures = {"threshold": enrollment.threshold, "reference_p50": float(np.quantile(ref, 0.5)),
               "reference_p90": float(np.quantile(ref, 0.9)), "frame_eer": 100.0 * equal_error_rate(s, degraded),
               "false_alarm_%": 100.0 * float(np.mean(s[~degraded] > enrollment.threshold))}
    for k in DEGRADATIONS:
        figures[f"{k}_%"] = 100.0 * float(np.mean(s[kind == k] > enrollment.threshold))
        figures[f"{k}_median"] = float(np.median(s[kind == k]))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help=f"{MODEL_CHOICES} (repeatable; default fast)")
    parser.add_argument("--out", type=Path, default=Path("degsearch-demo"), help="demo folder (generated if missing)")
    args = parser.parse_args()
    settings = get_settings()
    print("| model | reference p50 / p90 / p98 (threshold) | demo frame EER % | false alarms % | "
          + " | ".join(f"{k} % over (median score)" for k in DEGRADATIONS) + " |")
    print("| --- " * (4 + len(DEGRADATIONS)) + "|")
    for name in args.model or ["fast"]:
        f = demo_frame_figures(name, args.out, settings.smooth_frames, settings.clean_quantile)
        print(f"| {name} | {f['reference_p50']:.2f} / {f['reference_p90']:.2f} / {f['threshold']:.2f} | {f['frame_eer']:.1f} | "
              f"{f['false_alarm_%']:.1f} | " + " | ".join(f"{f[k + '_%']:.0f} ({f[k + '_median']:.2f})" for k in DEGRADATIONS) + " |")


if __name__ == "__main__":
    main()
