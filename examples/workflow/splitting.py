"""The workflow seed's 28-item splitting example, on shoal.

Cell 1 splits the items into at most 5 batches, cell 2 processes each batch as
one task (here on threads; ``backend="processes"`` or ``"dask"`` work the
same), cell 3 merges the processed batches back into one list.
"""

import shoal

# Cell 0: workflow parameters
param_item_count = 28
param_max_batch_count = 5

# Cell 1: generate a list of batches
items = list(range(param_item_count))
print(f"Generated items: {items}")
batches = shoal.split(items, max_batches=param_max_batch_count)
print(f"Item batches: {batches}")


# Cell 2: process a list of batches
def process_item(item):
    return item / 42


def process_batch(batch):
    return [process_item(item) for item in batch]


print(f"Batches to process: {batches}")
processed_batches = shoal.map(process_batch, batches, backend="threads", workers=5)
print(f"Processed batches: {processed_batches}")

# Cell 3: consume the processed batches
processed_items = shoal.merge(processed_batches)
print(f"Processed items: {processed_items}")
