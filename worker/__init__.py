"""The GPU worker: keeps one warm StableDiffusion3Pipeline and runs queued jobs on it."""
