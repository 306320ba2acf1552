"""Reference: StyleGAN2 synthesis as NVIDIA's stylegan2-ada-pytorch defines it, written plainly.

NVIDIA's code is under a non-commercial licence, so it is not vendored; this is a
from-the-paper transcription of the same arithmetic (equalised learning rate,
2nd-moment z normalisation, modulation / demodulation, ``conv_clamp``, skip / orig /
resnet wiring) that deliberately takes a different computation path from
``ml_backend.stylegan2``: one sample at a time, the unfused modulation
(scale inputs, convolve with the shared weight, scale outputs), and transposed
convolution written out as zero insertion plus an ordinary convolution.
It reads the flat state dict with NVIDIA's own key names.
"""

import math

import torch
import torch.nn.functional as F


def _zero_insert(x):
    n, c, h, w = x.shape
    out = x.new_zeros(n, c, 2 * h, 2 * w)
    out[:, :, ::2, ::2] = x
    return out


def _fir(x, f, pad):
    c = x.shape[1]
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    k = f.flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def _upsample_image(x, f):
    return _fir(_zero_insert(x), f * 4, (2, 1))


def _fc(state, prefix, x, lr=1.0, lrelu=False):
    w = state[prefix + "weight"] * (lr / math.sqrt(state[prefix + "weight"].shape[1]))
    y = x @ w.t() + state[prefix + "bias"] * lr
    return F.leaky_relu(y, 0.2) * math.sqrt(2) if lrelu else y


def _layer(state, prefix, x, w, f, up, clamp, gain=1.0):
    weight = state[prefix + "weight"]
    styles = _fc(state, prefix + "affine.", w[None])[0]                  # [I]
    x = x * styles[None, :, None, None]
    if up:
        k = weight.shape[-1]
        xz = _zero_insert(x)[:, :, :-1, :-1]
        x = F.conv2d(F.pad(xz, [k - 1] * 4), weight.flip([2, 3]))
        x = _fir(x, f * 4, (1, 1))
    else:
        x = F.conv2d(x, weight, padding=1)
    dcoefs = ((weight * styles[None, :, None, None]).square().sum(dim=[1, 2, 3]) + 1e-8).rsqrt()
    x = x * dcoefs[None, :, None, None]
    x = x + state[prefix + "noise_const"] * state[prefix + "noise_strength"]
    x = F.leaky_relu(x + state[prefix + "bias"][None, :, None, None], 0.2) * math.sqrt(2) * gain
    return x.clamp(-clamp * gain, clamp * gain) if clamp is not None else x


def _torgb(state, prefix, x, w, clamp):
    weight = state[prefix + "weight"]
    styles = _fc(state, prefix + "affine.", w[None])[0] / math.sqrt(weight.shape[1])
    y = F.conv2d(x * styles[None, :, None, None], weight) + state[prefix + "bias"][None, :, None, None]
    return y.clamp(-clamp, clamp) if clamp is not None else y


def generate(init_kwargs, state, z, psi=1.0):
    """z: [N, z_dim] -> img [N, C, R, R], constant noise."""
    mk = init_kwargs.get("mapping_kwargs", {})
    sk = init_kwargs.get("synthesis_kwargs", {})
    lr = mk.get("lr_multiplier", 0.01)
    arch = sk.get("architecture", "skip")
    clamp = sk.get("conv_clamp")
    res_log2 = int(math.log2(init_kwargs["img_resolution"]))
    num_ws = 2 * res_log2 - 2
    x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
    for i in range(mk.get("num_layers", 8)):
        x = _fc(state, f"mapping.fc{i}.", x, lr=lr, lrelu=True)
    w_avg = state["mapping.w_avg"]
    w = w_avg + psi * (x - w_avg)
    images = []
    for n in range(z.shape[0]):
        ws = [w[n]] * num_ws
        h = img = None
        idx = 0
        for r in range(2, res_log2 + 1):
            p = f"synthesis.b{2 ** r}."
            f = state[p + "resample_filter"]
            last = r == res_log2
            if h is None:
                h = _layer(state, p + "conv1.", state[p + "const"][None], ws[idx], f, False, clamp)
                idx += 1
            elif arch == "resnet":
                skip_w = state[p + "skip.weight"] / math.sqrt(state[p + "skip.weight"].shape[1])
                y = _upsample_image(F.conv2d(h, skip_w), f) * math.sqrt(0.5)
                h = _layer(state, p + "conv0.", h, ws[idx], f, True, clamp)
                h = _layer(state, p + "conv1.", h, ws[idx + 1], f, False, clamp, gain=math.sqrt(0.5))
                h = h + y
                idx += 2
            else:
                h = _layer(state, p + "conv0.", h, ws[idx], f, True, clamp)
                h = _layer(state, p + "conv1.", h, ws[idx + 1], f, False, clamp)
                idx += 2
            if img is not None:
                img = _upsample_image(img, f)
            if arch == "skip" or last:
                y = _torgb(state, p + "torgb.", h, ws[idx], clamp)
                img = y if img is None else img + y
        images.append(img)
    return torch.cat(images)
