"""``pathology run``: a trained model applied to a batch of slides, end to end, with a report."""
