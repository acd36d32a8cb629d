"""The triage domain and its Celery tasks: text preparation, embedding, the vector store,
hybrid ranking, routing and the decision rows (:mod:`worker.pipeline`), batched per process
(:mod:`worker.batcher`, :mod:`worker.runtime`) behind thin tasks (:mod:`worker.tasks`).
Never imports :mod:`producer`."""
