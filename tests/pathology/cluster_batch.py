"""A tiling batch on a simulated two-node Ray cluster that loses its worker node mid-batch
(run in its own process by test_scale_out.py: it needs a cluster of its own)."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from pathology.batch import run_batch
from pathology.executors import EXECUTORS
from pathology.inputs import expand_inputs
from pathology.tiling.pipeline import TileOptions
from pathology.tiling.stage import tile_stage


def main(slides: str, out: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)

    def lose_the_worker_node() -> None:  # as soon as the first bag is published, more are under way
        while not list(Path(out).glob("*.h5")):
            time.sleep(0.02)
        cluster.remove_node(worker)

    threading.Thread(target=lose_the_worker_node, daemon=True).start()
    outcomes = run_batch(expand_inputs([slides]), tile_stage(Path(out), TileOptions(stain="macenko"), threads=1),
                         executor=EXECUTORS["ray"](cpus_per_slide=1), clean=[Path(out)])
    print(json.dumps({"statuses": {o.slide_id: o.status for o in outcomes},
                      "nodes_alive": sum(n["Alive"] for n in ray.nodes())}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
