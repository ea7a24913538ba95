"""Research domains, one slice each, built on the core plug-in.

* :mod:`lightning_mtl.tasks.gcd`: generalized category discovery (SimGCD objectives, SwAV,
  EAGC, clustering accuracy, the SSB benchmarks; the embedded default recipe's model).
* :mod:`lightning_mtl.tasks.long_tail`: long-tailed recognition (CIFAR-LT, ResNet-32, LDAM-DRW,
  Balanced Softmax, logit adjustment, mixup, cRT, PLOT's variability collapse, Many/Med/Few).
* :mod:`lightning_mtl.tasks.multitask`: multi-task learning (multi-digits, CelebA, NYUv2, Δm%,
  mean rank).
* :mod:`lightning_mtl.tasks.common`: what the slices share (data-module base, seeded samplers,
  local dataset files, optimiser recipes, the digits CNN).

Each slice has its own optional dependencies (``pip install "lightning-mtl[gcd]"``, ``[long_tail]``,
``[multitask]`` or ``[all]``); importing a slice without them raises an error that names the
command. The core never imports a slice, and a slice never imports another (only ``common``).
"""
