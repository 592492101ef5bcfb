"""Write the monitoring walkthrough's reference rows and batch from
``examples/data/cardio_new.csv`` (docs/monitoring.md).

- ``cardio_clean.csv``: the first 400 rows labelled normal (``label`` 0),
  rows known to be normal, for ``anomvae calibrate``;
- ``cardio_batch.csv``: the other 150 rows (97 normal, 53 anomalies), a
  new batch for ``anomvae score`` and ``examples/monitor.sh``.

Neither keeps the ``label`` column, as data from a live feed would have
none; the labels stay in ``cardio_new.csv`` under the same ``record_id``.
Lines are copied as they are, in file order, so the output is the same
byte for byte on every run::

    .venv/bin/python examples/monitoring_data.py            # rewrites examples/data/cardio_{clean,batch}.csv
    .venv/bin/python examples/monitoring_data.py --out DIR  # writes them into DIR instead
"""

import argparse
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
N_CLEAN = 400


def split(source=DATA / "cardio_new.csv", n_clean=N_CLEAN):
    """The lines of the clean and batch files, without ``label``."""
    header, *rows = source.read_text().splitlines()
    names = header.split(",")
    label = names.index("label")

    def without_label(line):
        fields = line.split(",")
        return ",".join(fields[:label] + fields[label + 1:])

    normal = [i for i, row in enumerate(rows) if row.split(",")[label] == "0"]
    clean = set(normal[:n_clean])
    head = without_label(header)
    return ([head] + [without_label(rows[i]) for i in sorted(clean)],
            [head] + [without_label(row) for i, row in enumerate(rows) if i not in clean])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA, help="folder to write into (default: examples/data)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, lines in zip(("cardio_clean.csv", "cardio_batch.csv"), split()):
        (args.out / name).write_text("\n".join(lines) + "\n")
        print(f"{args.out / name}: {len(lines) - 1} rows")


if __name__ == "__main__":
    main()
