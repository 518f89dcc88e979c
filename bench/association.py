"""Online association's cost against the size of the gallery (a long run's identities accumulate).

    PYTHONPATH=. python bench/association.py [--sizes 100,1000,3000] [--ready 4]

Builds a gallery of N identities of three ended tracklets each (random 256-d appearances, cameras and
times spread over a day, so that nothing matches), then times ``Associator.associate`` for ``--ready``
tracklets that are ready at once, as one pipeline step would: the second of two calls, after the first
has seen every identity. Prints ms per call for each gallery size.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from reidcam.app.config import AssociationConfig
from reidcam.tracking.association import Associator, Topology
from reidcam.tracking.tracklets import Tracklet

EMBED_DIM = 256
CAMERAS = 16


def random_tracklet(rng: np.random.Generator, camera: int, local_id: int, start: float, end: float) -> Tracklet:
    item = Tracklet(f"cam{camera:02d}", local_id, first_frame=int(start * 25), first_time=start)
    item.observe(int(end * 25), end)
    vector = rng.normal(size=EMBED_DIM)
    for _ in range(5):
        item.add_embedding(vector / np.linalg.norm(vector), quality=1.0)
    return item


def gallery_of(size: int, rng: np.random.Generator) -> Associator:
    config = AssociationConfig()
    associator = Associator(config, Topology([], config))
    for index in range(size):
        start = index * 10.0  # an identity every 10 s, seen three times 30 s apart
        pieces = [random_tracklet(rng, (index + k) % CAMERAS, 3 * index + k, start + k * 30, start + k * 30 + 20)
                  for k in range(3)]
        identity = associator.gallery.create(pieces[0])
        for piece in pieces[1:]:
            associator.gallery.attach(piece, identity)
        for piece in pieces:
            piece.closed = True
    return associator


def ms_per_association(size: int, ready: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    associator = gallery_of(size, rng)
    now = size * 10.0 + 100
    batches = [[random_tracklet(rng, k, 10 * size + 10 * round_ + k, now + k, now + 20 + k) for k in range(ready)]
               for round_ in range(2)]
    associator.associate(batches[0])
    started = time.perf_counter()
    associator.associate(batches[1])
    return (time.perf_counter() - started) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,3000")
    parser.add_argument("--ready", type=int, default=4)
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"{size:6d} identities: {ms_per_association(size, args.ready):7.2f} ms per association of {args.ready}")


if __name__ == "__main__":
    main()
