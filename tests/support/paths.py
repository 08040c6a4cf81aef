"""Where the repository and its pieces are."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "hack" / "cluster"
CRDS = REPO / "crds"
