"""The HTTP front end: validates jobs, queues them, and serves their state and images.

Nothing here imports torch or diffusers; the API image stays slim.
"""
