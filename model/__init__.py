# Every entry point (main.py, model_explorer, notebooks, tests, bench/) imports the model package:
# with LM_MALLOC_TUNING=1, keep freed tensor buffers in the process for reuse instead of returning them
# to the OS each step (faster, but a much higher peak RSS: see model/allocator.py).
from model.allocator import tune_allocator

tune_allocator()
