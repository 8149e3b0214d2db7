r"""The same AlexNet's SGD step in PyTorch, timed on request: benchmarks/train_step.py runs this
file with `--torch_python` (a Python with torch; the project does not depend on it).

  PY torch_step.py '<json net spec>'     # then one line per round on stdin: the step count

The spec (written by train_step.py from the config, so both nets have the same layers): batch,
image_size, channels, num_classes, convs [[features, kernel, stride, padding], ...], fc
features, lrn (null or [k, n, alpha, beta] with the paper's alpha: torch's LocalResponseNorm
divides alpha by n, so it gets alpha * n), pool [window, stride], dropout. The step is torch's
usual one (NCHW, float32, zero_grad, forward, cross-entropy, backward, SGD with momentum and
weight decay). Prints 'ready' after a warm-up step, then per round '<wall s> <CPU s>' per step.
"""

import json
import sys
import time

import torch
from torch import nn


def alexnet(spec):
    layers, channels, size = [], spec['channels'], spec['image_size']
    window, stride = spec['pool']
    for i, (features, kernel, conv_stride, padding) in enumerate(spec['convs']):
        layers += [nn.Conv2d(channels, features, kernel, conv_stride, padding), nn.ReLU()]
        size = (size + 2 * padding - kernel) // conv_stride + 1
        if spec['lrn'] and i < 2:
            k, n, alpha, beta = spec['lrn']
            layers.append(nn.LocalResponseNorm(n, alpha * n, beta, k))
        if i in (0, 1, 4):
            layers.append(nn.MaxPool2d(window, stride))
            size = (size - window) // stride + 1
        channels = features
    flat, fc = channels * size * size, spec['fc']
    layers += [nn.Flatten(), nn.Linear(flat, fc), nn.ReLU(), nn.Dropout(spec['dropout']),
               nn.Linear(fc, fc), nn.ReLU(), nn.Dropout(spec['dropout']),
               nn.Linear(fc, spec['num_classes'])]
    return nn.Sequential(*layers)


def main():
    spec = json.loads(sys.argv[1])
    torch.manual_seed(0)
    model = alexnet(spec).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(spec['batch'], spec['channels'], spec['image_size'], spec['image_size'])
    y = torch.randint(0, spec['num_classes'], (spec['batch'],))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    step()
    print('ready', flush=True)
    for line in sys.stdin:
        n = int(line)
        step()  # As train_step.py's rounds: one untimed step after the switch.
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            step()
        print((time.perf_counter() - start) / n, (time.process_time() - cpu) / n, flush=True)


if __name__ == '__main__':
    main()
