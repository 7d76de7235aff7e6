"""Stage 3 of ELM: a terrain-conditioned program writer trained with RL, and learned controllers.

- `embedding`: a terrain -> a few vectors in the LM's embedding space (a soft prompt): a learned
  code per training terrain plus an encoder of the terrain's height profile, so unseen terrains
  embed too.
- `policy`: the stage-2 decoder run behind that soft prompt: sampling whole programs, their
  token log-probs and a value head (the decoder's own layers; `elmjax.lm` is not changed).
- `ppo`: the math (per-token KL reward, GAE, clipped losses) as pure functions.
- `trainer`: `elmjax rl`: sample, score through `elmjax.evaluation` (the sandbox and simulator
  `evolve` uses), update, checkpoint, roll back a diverging step, resume exactly.
- `evaluate`: the terrain x conditioning matrices (`eval.json`), baselines, curves, pictures.
- `controllers`: closed-loop muscle controllers for an evolved body with Brax's PPO and APG.

This package imports `evaluation` and `run_dir`, never the ELM loop (docs/architecture.md).
"""
