# Every entry point (main.py, model_explorer, notebooks, tests, bench/) imports the model package:
# big tensors get transparent huge pages (a training step's tens-of-MB buffers fault in 2 MB pages, not
# 4 kB ones), and freed buffers stay in the process for the next step (see model/allocator.py).
from model.allocator import tune_allocator, use_huge_pages

use_huge_pages()
tune_allocator()
