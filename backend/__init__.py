"""The Label Studio ML backend service: web app, queues, workers, label store."""
