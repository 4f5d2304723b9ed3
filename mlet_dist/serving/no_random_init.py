"""Build a model whose every weight a checkpoint is about to overwrite, without drawing its init.

mlet-collapse and the serving loaders build the model, then fill every parameter from a checkpoint
(DCP's load is strict: a key the checkpoint lacks is an error, never a weight left as built). The
random init they build it with is pure cost: at Criteo-Kaggle size TorchRec fills the 8.6 GB of
k-wide tables twice (fbgemm's kernel init, then the sharded collection's ``reset_parameters``) and
a stock EmbeddingBagCollection twice too (nn.EmbeddingBag's normal_, then its own uniform_): the
largest stage of mlet-collapse (issue 26).
"""

from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch.nn import init
from torch.overrides import TorchFunctionMode

# In-place random fills. nn.init's uniform_, normal_ and kaiming_uniform_ are torch functions of
# their own (a mode sees them, not the Tensor method they call); the others reach the methods.
RANDOM_FILLS = frozenset(
    {torch.Tensor.uniform_, torch.Tensor.normal_, init.uniform_, init.normal_, init.kaiming_uniform_}
)
# Random factories: fbgemm's dense table kernel allocates its weights with torch.randn.
RANDOM_FACTORIES = frozenset({torch.randn, torch.rand})


class NoRandomInit(TorchFunctionMode):
    """``with NoRandomInit(): build()``: in-place random fills leave the tensor as allocated and
    random factories only allocate; every other torch call runs as usual (computed buffers such as
    InteractionArch's triu_indices, the sharding planner). Use it only where every parameter is
    loaded afterwards."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: Optional[Dict[str, Any]] = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in RANDOM_FILLS:
            return args[0] if args else kwargs["tensor"]  # nn.init passes its tensor by keyword
        if func in RANDOM_FACTORIES:  # the same tensor, allocated only
            return torch.empty(*args, **{k: v for k, v in kwargs.items() if k != "generator"})
        return func(*args, **kwargs)
