"""One worker of a multi-process test job: jax.distributed on 127.0.0.1, gloo CPU collectives.

Started by tests/distributed_pool.py as ``python dist_worker.py ADDR NPROC PID NDEV``; reads one JSON
command per line on stdin (a function of tests/dist_cases.py and its keyword arguments) and answers
one ``@@{json}`` line per command on stdout, so one job serves several test cases.
"""

import json
import os
import sys
import traceback

addr, nproc, pid, ndev = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", ndev)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(addr, nproc, pid, initialization_timeout=60)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dist_cases  # noqa: E402

print("@@" + json.dumps({"ready": True, "devices": jax.device_count(), "processes": jax.process_count()}),
      flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    try:
        out = {"ok": getattr(dist_cases, cmd["case"])(**cmd.get("kw", {}))}
    except BaseException as e:  # reported to the test, which asserts on it
        out = {"error": type(e).__name__, "message": str(e), "mro": [c.__name__ for c in type(e).__mro__],
               "trace": traceback.format_exc()[-2000:]}
    print("@@" + json.dumps(out, default=str), flush=True)
