"""The ``anomvae`` command."""

import click

from . import __version__


@click.group()
@click.version_option(__version__, prog_name="anomvae")
def main():
    """Find anomalies with variational autoencoders."""
