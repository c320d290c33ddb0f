"""Every op as a function: ``ht.ops.add(a, b)``, ``ht.ops.conv2d(x, w, strides=(2, 2))``.

Importing this package registers every op family in ``hetero.ops.registry``. Each public function
runs eagerly, or records a node inside ``@hetero.function``; each takes ``device=`` to annotate.
Each family module lists its public functions in ``__all__``.
"""

# the Tensor operators and methods, now that every op exists
from hetero.ops import methods  # noqa: E402,F401,I001
from hetero.ops.attention import *  # noqa: F403
from hetero.ops.elementwise import *  # noqa: F403
from hetero.ops.grads import *  # noqa: F403
from hetero.ops.index import *  # noqa: F403
from hetero.ops.linalg import *  # noqa: F403
from hetero.ops.misc import *  # noqa: F403
from hetero.ops.nn import *  # noqa: F403
from hetero.ops.reduce import *  # noqa: F403
from hetero.ops.registry import REGISTRY, Cost, Op, lookup  # noqa: F401
from hetero.ops.shape import *  # noqa: F403
from hetero.ops.spatial import *  # noqa: F403
from hetero.ops.transfer import *  # noqa: F403
