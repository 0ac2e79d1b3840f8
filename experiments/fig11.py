"""Figure 11: training loss curves for selected regularisation strengths, random labels vs real data.

See ``regularisers.py`` for the claim; the settings are Figure 10's, with fewer strengths.

    python experiments/fig11.py --gpus 2
    python experiments/fig11.py --quick
"""

from __future__ import annotations

from pathlib import Path

from common import parse_config, plot_panels
from regularisers import QUICK, RegulariserConfig, sweep

#: The strengths shown (the paper's selection is not recorded in our notes).
SELECTED = {"dropout": (0.5, 0.9), "adversarial": (0.5,)}


def main(argv: list[str] | None = None):
    cfg, args = parse_config(RegulariserConfig, QUICK, __doc__.split("\n")[0], argv, figure="fig11")
    selected = {r: s for r, s in SELECTED.items() if r in cfg.regularisers}
    runs = sweep("fig11", cfg, args, selected)
    if next(iter(runs.values()))["real"].is_global_zero:
        panels = []
        for variant in ("randY", "real"):
            curves = {}
            for (reg, strength), pair in runs.items():
                label = "no regulariser" if strength == 0 else f"{reg} {strength:g}"
                curves[label] = pair[variant].series("train/loss")
            panels.append((f"training loss ({variant})", curves))
        out = Path(args.out) / "fig11" / "fig11.png"
        plot_panels(out, panels, title=f"Fig. 11: {cfg.dataset}, {cfg.model}")
        print(f"[fig11] figure: {out}")
    return runs


if __name__ == "__main__":
    main()
