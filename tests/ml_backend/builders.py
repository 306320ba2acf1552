"""Writers for test checkpoints in exactly the layouts public releases store.

* NVIDIA ``.pkl``: ``dict(G, D, G_ema, augment_pipe, training_set_kwargs)`` whose
  networks pickle as ``torch_utils.persistence._reconstruct_persistent_obj(meta)``
  with ``meta = dict(type, version, module_src, class_name, state)``, the state being
  the nn.Module ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``,
  ``_init_kwargs`` as ``dnnlib.util.EasyDict``), tensors through torch's own reduce
  (``_rebuild_parameter`` / ``_rebuild_tensor_v2`` / ``torch.storage._load_from_bytes``).
  Stand-in ``torch_utils`` / ``dnnlib`` modules exist only while pickling.
* rosinality ``.pt``: ``torch.save({"g_ema": state_dict, "latent_avg": w})`` of the
  reference port's Generator, so keys and buffers are the real ones.
"""

import argparse
import contextlib
import math
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import torch

from tests.ml_backend.reference import rosinality_model

# Anything placed here would run under a stock unpickler + exec; ours must ignore it.
MODULE_SRC = "import os\nos.system('echo module_src was executed')\n"


def nvidia_kwargs(*, z_dim=32, w_dim=32, img_resolution=32, num_layers=2, channel_base=512,
                  channel_max=64, conv_clamp=None, architecture="skip", num_fp16_res=0, c_dim=0):
    return dict(
        z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=3,
        mapping_kwargs=dict(num_layers=num_layers),
        synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max,
                              num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
                              architecture=architecture),
    )


class Node:
    """One nn.Module as NVIDIA's networks.py would have built it."""

    def __init__(self, class_name, init_kwargs=None):
        self.class_name = class_name
        self.init_kwargs = init_kwargs or {}
        self.params = OrderedDict()
        self.buffers = OrderedDict()
        self.children = OrderedDict()

    def flat(self, prefix=""):
        out = {prefix + k: v for k, v in {**self.params, **self.buffers}.items()}
        for name, child in self.children.items():
            out.update(child.flat(f"{prefix}{name}."))
        return out


def _filter():
    f = torch.tensor([1.0, 3, 3, 1])
    f = f[:, None] * f[None, :]
    return f / f.sum()


def _fc(g, in_f, out_f, bias_init=0.0, lr=1.0):
    n = Node("FullyConnectedLayer", dict(in_features=in_f, out_features=out_f))
    n.params["weight"] = torch.randn(out_f, in_f, generator=g) / lr
    n.params["bias"] = bias_init + 0.1 * torch.randn(out_f, generator=g)
    return n


def _synthesis_layer(g, in_c, out_c, w_dim, res):
    n = Node("SynthesisLayer", dict(in_channels=in_c, out_channels=out_c, resolution=res))
    n.buffers["resample_filter"] = _filter()
    n.children["affine"] = _fc(g, w_dim, in_c, bias_init=1.0)
    n.params["weight"] = torch.randn(out_c, in_c, 3, 3, generator=g)
    n.buffers["noise_const"] = torch.randn(res, res, generator=g)
    n.params["noise_strength"] = 0.3 * torch.randn([], generator=g)
    n.params["bias"] = 0.1 * torch.randn(out_c, generator=g)
    return n


def nvidia_generator(kwargs, seed=0):
    """Random G_ema tree for ``kwargs`` (same init kwargs NVIDIA's Generator stores)."""
    g = torch.Generator().manual_seed(seed)
    sk, mk = kwargs["synthesis_kwargs"], kwargs["mapping_kwargs"]
    w_dim, res_max = kwargs["w_dim"], kwargs["img_resolution"]
    arch = sk.get("architecture", "skip")
    ch = {2 ** r: min(sk["channel_base"] // 2 ** r, sk["channel_max"])
          for r in range(2, int(math.log2(res_max)) + 1)}
    root = Node("Generator", kwargs)
    syn = root.children["synthesis"] = Node("SynthesisNetwork", sk)
    for res in ch:
        b = Node("SynthesisBlock", dict(resolution=res))
        b.buffers["resample_filter"] = _filter()
        if res == 4:
            b.params["const"] = torch.randn(ch[4], 4, 4, generator=g)
        else:
            b.children["conv0"] = _synthesis_layer(g, ch[res // 2], ch[res], w_dim, res)
        b.children["conv1"] = _synthesis_layer(g, ch[res], ch[res], w_dim, res)
        if arch == "skip" or res == res_max:
            t = b.children["torgb"] = Node("ToRGBLayer")
            t.children["affine"] = _fc(g, w_dim, ch[res], bias_init=1.0)
            t.params["weight"] = torch.randn(3, ch[res], 1, 1, generator=g)
            t.params["bias"] = 0.1 * torch.randn(3, generator=g)
        if arch == "resnet" and res > 4:
            s = b.children["skip"] = Node("Conv2dLayer")
            s.params["weight"] = torch.randn(ch[res], ch[res // 2], 1, 1, generator=g)
            s.buffers["resample_filter"] = _filter()
        syn.children[f"b{res}"] = b
    m = root.children["mapping"] = Node("MappingNetwork", mk)
    n_layers = mk.get("num_layers", 8)
    for i in range(n_layers):
        in_f = kwargs["z_dim"] if i == 0 else w_dim
        m.children[f"fc{i}"] = _fc(g, in_f, w_dim, lr=mk.get("lr_multiplier", 0.01))
    m.buffers["w_avg"] = 0.3 * torch.randn(w_dim, generator=g)
    return root


@contextlib.contextmanager
def _nvidia_modules():
    """Temporarily importable ``torch_utils.persistence`` and ``dnnlib.util`` for pickling."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # never called: only its name is pickled
        raise AssertionError("stand-in")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence
    util = types.ModuleType("dnnlib.util")
    easydict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    util.EasyDict = easydict
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.util, dnnlib.EasyDict = util, easydict
    mods = {"torch_utils": torch_utils, "torch_utils.persistence": persistence,
            "dnnlib": dnnlib, "dnnlib.util": util}
    sys.modules.update(mods)
    try:
        yield _reconstruct_persistent_obj, easydict
    finally:
        for name in mods:
            sys.modules.pop(name, None)


def _easy(value, easydict):
    if isinstance(value, dict):
        return easydict({k: _easy(v, easydict) for k, v in value.items()})
    return value


class _Persistent:
    def __init__(self, node, reconstruct, easydict, module_src):
        self.reconstruct = reconstruct
        self.meta = dict(type="class", version=6, module_src=module_src,
                         class_name=node.class_name, state=dict(
            training=False,
            _parameters=OrderedDict((k, torch.nn.Parameter(v, requires_grad=False))
                                    for k, v in node.params.items()),
            _buffers=OrderedDict(node.buffers),
            _non_persistent_buffers_set=set(),
            _backward_hooks=OrderedDict(), _forward_hooks=OrderedDict(),
            _forward_pre_hooks=OrderedDict(), _state_dict_hooks=OrderedDict(),
            _load_state_dict_pre_hooks=OrderedDict(),
            _modules=OrderedDict((k, _Persistent(c, reconstruct, easydict, module_src))
                                 for k, c in node.children.items()),
            _init_args=(),
            _init_kwargs=_easy(node.init_kwargs, easydict),
        ))

    def __reduce__(self):
        return (self.reconstruct, (self.meta,))


def write_nvidia_pkl(path, g_ema, *, module_src=MODULE_SRC, extra=None):
    """Write ``g_ema`` (a Node tree) as a training snapshot pickle."""
    d = Node("Discriminator", dict(c_dim=0, img_resolution=32))
    d.params["b32.fromrgb.weight"] = torch.randn(8, 3, 1, 1)
    with _nvidia_modules() as (reconstruct, easydict):
        wrap = lambda n: _Persistent(n, reconstruct, easydict, module_src)  # noqa: E731
        g_copy = nvidia_generator(g_ema.init_kwargs, seed=999)  # the non-EMA G differs
        data = dict(G=wrap(g_copy), D=wrap(d), G_ema=wrap(g_ema), augment_pipe=None,
                    training_set_kwargs=easydict(path="anime.zip", resolution=np.int64(32),
                                                 use_labels=False, max_size=np.int64(1000)))
        if extra:
            data.update(extra)
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=pickle.DEFAULT_PROTOCOL)
    return path


def rosinality_generator(*, size=32, style_dim=32, n_mlp=2, channels=None, seed=0):
    """Reference rosinality Generator with every parameter and buffer randomised."""
    torch.manual_seed(seed)
    channels = channels or {4: 64, 8: 64, 16: 32, 32: 16, 64: 8}
    g = rosinality_model.Generator(size, style_dim, n_mlp, channels=channels).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith(("noise.weight",)):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith(("activate.bias", "to_rgb1.bias")) or ".bias" in name[-5:]:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return g


def write_rosinality_pt(path, g, latent_avg, *, training_snapshot=False, legacy=False):
    data = {"g_ema": g.state_dict(), "latent_avg": latent_avg}
    if training_snapshot:  # what train.py saves: also g, d, optimisers and argparse args
        data.update(g=g.state_dict(), d={}, args=argparse.Namespace(size=g.size, n_mlp=2))
    torch.save(data, path, _use_new_zipfile_serialization=not legacy)
    return path
