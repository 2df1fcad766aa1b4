"""Running a model over images: the conv-map cache, the image/proposal loader, batched
detection over a data set."""
