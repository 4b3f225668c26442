"""Bar chart of a benchmark run: wall time of each scenario relative to buildah's cold build +
push (= 1.0), buildah and flops-image-builder side by side, the speed-up above each bar.

    python chart.py DATA.json OUT.png   (DATA: {"title": ..., "rows": [[label, buildah_s, ours_s]]})
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(data_path: str, out_path: str) -> None:
    with open(data_path) as f:
        data = json.load(f)
    rows = data["rows"]
    ref = rows[0][1]  # buildah cold
    labels = [r[0] for r in rows]
    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    ax.bar([i - 0.2 for i in x], [r[1] / ref for r in rows], 0.4,
           label="buildah build + push", color="#999999")
    bars = ax.bar([i + 0.2 for i in x], [r[2] / ref for r in rows], 0.4,
                  label="flops-image-builder", color="#2a7ab9")
    for bar, (_, peer, ours) in zip(bars, rows):
        ax.annotate(f"{peer / ours:.1f}× faster",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")
    ax.set_xticks(x, labels)
    ax.set_ylabel("wall time, relative to buildah cold")
    ax.set_title(data["title"], fontsize=10)
    ax.set_ylim(0, 1.3)
    ax.legend(loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
