"""``python -m anomvae``: the ``anomvae`` program, as its console script runs it."""

from anomvae.cli import run

if __name__ == "__main__":
    run()
