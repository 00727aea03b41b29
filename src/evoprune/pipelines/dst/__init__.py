"""dst: dynamic sparse training, beside prune (``kedro run --pipeline=dst``)."""
