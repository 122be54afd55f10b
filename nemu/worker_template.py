"""The template that local extraction workers are forked from (nemu.workers._worker_context).

Imported once, by the multiprocessing fork server only: it imports and warms up what image extraction needs
(nemu.workers.warm_up_worker_template: torch, timm/torchvision, the first kernels), so each worker forked from the
server starts warm for images; the build's text-and-audio process holds jieba and librosa. Importing it
anywhere else costs those seconds and changes nothing.
"""

from nemu.workers import warm_up_worker_template

warm_up_worker_template()
