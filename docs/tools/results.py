"""The tables and pictures of docs/results.md, made from runs' output folders (not used by the scripts).

  python docs/tools/results.py table LABEL=DIR[,DIR...] ...            markdown rows from each run's metrics.json
  python docs/tools/results.py rows GRID.png OUT.png IMG_SIZE ROW[,ROW...]   keep rows of a sample grid
"""
import json
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from common import METRIC_COLUMNS, UserError, cli  # noqa: E402

COLUMNS = {key: (label, key, fmt) for label, key, fmt in METRIC_COLUMNS}  # the eval table's names and formats
TWO_DOMAIN_COLUMNS = [COLUMNS[k] for k in ("translation_success", "background_psnr_db", "attention_iou",
                                           "attention_pointing", "toy_kid_blocks_x100")]
ATTRIBUTE_COLUMNS = [COLUMNS[k] for k in ("attribute_accuracy", "preserve_psnr_db", "preserve_l1", "kept_accuracy",
                                          "attention_iou", "attention_pointing", "retrieval_top30")]
REGION_KEYS = ("sleeve_colour_change_in_sleeves", "plain_colour_change_in_sleeves")


def _cell(values, fmt):
    """One run: the value; several: mean ± sample std (ddof 1) over them (for percentages in points)."""
    percent = fmt.endswith("%}")
    if len(values) == 1:
        return fmt.format(values[0])
    mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
    return fmt.format(mean) + " ± " + (fmt.replace("%", "f").format(100 * std) if percent else fmt.format(std))


def results_table(specs):
    """Markdown rows, one per `LABEL=DIR[,DIR...]` spec, every cell read from DIR/metrics.json (and
    the seed from DIR/args.json); several DIRs (seeds) give mean ± std. Two-domain runs show A→B / B→A
    per cell, attribute runs colour / sleeve (and AMGAN's region metric when present)."""
    rows, header, header_parts = [], None, None
    for spec in specs:
        label, _, dirs = spec.rpartition("=")
        if not label:
            raise UserError(f"'{spec}': write each row as LABEL=DIR or LABEL=DIR1,DIR2 (seeds of one method)")
        runs = []
        for d in dirs.split(","):
            path = os.path.join(d, "metrics.json")
            if not os.path.exists(path):
                raise UserError(f"{path} does not exist: run --phase eval --out {d} first")
            with open(path) as f:
                metrics = json.load(f)
            with open(os.path.join(d, "args.json")) as f:
                metrics["seed"] = json.load(f)["seed"]
            runs.append(metrics)
        kinds = {"a2b" in r for r in runs}
        parts, columns = (("a2b", "b2a"), TWO_DOMAIN_COLUMNS) if "a2b" in runs[0] else (("color", "sleeve"), ATTRIBUTE_COLUMNS)
        if len(kinds) > 1 or (header is not None and header_parts != parts):
            raise UserError(f"'{spec}': a table holds either two-domain runs or attribute runs; make one table of each")
        header_parts = parts
        region = all("region" in r for r in runs)
        names = [name for name, _, _ in columns] + (["colour change inside the sleeves: confined / plain"] if region else [])
        if header is None:
            header = ["method (cells: " + (" / ".join(("A→B", "B→A") if parts[0] == "a2b" else parts)) + ")", "seed"] + names
            rows += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        cells = [label, "/".join(str(r["seed"]) for r in runs)]
        for _, key, fmt in columns:
            per_part = []
            for part in parts:
                values = [r[part].get(key) for r in runs]
                if any(v is None for v in values):
                    per_part.append("–")
                    continue
                values = [v[0] if isinstance(v, list) else v for v in values]  # KID: the estimate, not its spread
                per_part.append(_cell(values, fmt))
            cells.append(" / ".join(per_part))
        if region:
            cells.append(" / ".join(_cell([r["region"][k] for r in runs], "{:.1%}") for k in REGION_KEYS))
        cells += ["–"] * (len(header) - len(cells))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def grid_rows(src, dst, img_size, rows):
    """Keep `rows` (0-based) of a sample grid written by save_grid (2 px padding): the README's
    pictures are chosen rows of a run's last samples/step_*.png, saved with a 256-colour palette
    (no visible change; the RGB toy pictures shrank to 29-39% of their size) so that assets/ stays
    small."""
    grid = np.asarray(Image.open(src).convert("RGB"))
    pitch = img_size + 2
    if (grid.shape[0] - 2) % pitch:
        raise UserError(f"{src} is {grid.shape[0]} px high, not a grid of {img_size} px rows with 2 px padding")
    n_rows = (grid.shape[0] - 2) // pitch
    if any(not 0 <= r < n_rows for r in rows):
        raise UserError(f"{src} has rows 0..{n_rows - 1}, asked for {rows}")
    kept = [grid[:2]] + [grid[2 + r * pitch: 2 + (r + 1) * pitch] for r in rows]
    Image.fromarray(np.concatenate(kept)).quantize(256, dither=Image.Dither.NONE).save(dst, optimize=True)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command == "table" and len(sys.argv) > 2:
        cli(lambda: print(results_table(sys.argv[2:])))
    elif command == "rows" and len(sys.argv) == 6:
        cli(lambda: grid_rows(sys.argv[2], sys.argv[3], int(sys.argv[4]), [int(r) for r in sys.argv[5].split(",")]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
