# Every entry point (main.py, model_explorer, notebooks, tests, bench/) imports the model package:
# keep freed tensor buffers in the process for reuse instead of returning them to the OS each step.
from model.allocator import tune_allocator

tune_allocator()
