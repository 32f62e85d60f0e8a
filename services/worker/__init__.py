"""Engine workers: long-lived processes that take jobs off a model's queue and stream tokens back."""
