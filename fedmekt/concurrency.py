"""One lock for the process-global torch RNG.

The engines build their initial models, fixed projections and probe heads under
``torch.random.fork_rng`` + ``manual_seed`` (global CPU generator). Two parties constructing
at the same moment in one process (``fedmekt simulate`` runs the aggregator and every client
as threads) would interleave their draws and start from different weights than the
in-process run. Parties sharing a process hold this lock around engine construction and the
final probe; separate processes are unaffected.
"""

import threading

TORCH_RNG_LOCK = threading.RLock()
