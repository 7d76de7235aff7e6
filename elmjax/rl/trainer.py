"""`elmjax rl`: PPO over whole programs, conditioned on a terrain.

One step:

```
keys = fold_in(fold_in(seed, step), rollbacks)                   (deterministic, resumable)
soft prompts for each conditioning terrain x samples_per_terrain  (embedding.py)
sample programs (jit, policy.sample_actions)  -> texts (host: decode, cut at stop strings)
evaluate_programs on each row's own terrain (the sandbox + simulator `evolve` uses)
reward = reward_scale * distance toward the goal (invalid: reward_scale * invalid_penalty)
old log-probs and values, reference log-probs (jit)  -> per-token KL reward, GAE (ppo.py)
epochs x minibatches of clipped PPO updates (optax Adam, global-norm clip)
metrics.jsonl + TensorBoard; orbax checkpoint every `checkpoint_every` steps
```

A step whose reward, loss or parameters are not finite is rolled back: the parameters and
optimizer state of the last checkpoint are restored, the steps after it are redone with fresh
keys (the rollback count enters the key), and a `rollback` row is logged. Checkpoints hold the
trained parameters, the optimizer state, the step and the rollback count, so `--resume` continues
exactly as an uninterrupted run would (tested bitwise on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from elmjax.evaluation import evaluate_programs
from elmjax.rl import ppo
from elmjax.rl.config import RLConfig
from elmjax.rl.embedding import TerrainEmbedding, terrain_profile
from elmjax.rl.policy import Policy, ValueHead, base_prefix, sample_actions, score_actions

#: Text whose token embeddings start the soft prompt (cycled to `prefix_len`).
BASE_PREFIX_TEXT = "# a walker for this terrain\n"
#: Environment variable that injects a NaN reward at chosen steps (tests of the rollback):
#: `ELMJAX_RL_FAULT=nan:STEP[,nan:STEP...]`; each fires on the first attempt of its step only.
FAULT_ENV = "ELMJAX_RL_FAULT"
#: Program ids of evaluation samples start here, far above any training step's ids.
EVAL_ID_BASE = 1 << 40


class Diverged(RuntimeError):
    """A step produced a non-finite reward, loss or parameter."""


def _fault_steps() -> set[int]:
    spec = os.environ.get(FAULT_ENV, "")
    out = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, step = item.partition(":")
        if kind != "nan" or not step.isdigit():
            raise ValueError(f"{FAULT_ENV}: bad item {item!r} (nan:STEP)")
        out.add(int(step))
    return out


def leaf_names(tree: Any) -> list[str]:
    """Stable names of a pytree's leaves (the checkpoint's keys)."""

    def part(k: Any) -> str:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    return [
        ".".join(part(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


class PolicyFunctions:
    """The policy split once into (graph, trained, frozen) and its jit-compiled functions."""

    def __init__(self, model: Any, config: RLConfig, prompt_ids: list[int]) -> None:
        from elmjax.lm.state import unstack_layers
        from elmjax.lm.tokenizer import encode

        self.config = config
        decoder = unstack_layers(model.decoder)
        lm = decoder.config
        eos = model.tokenizer.token_to_id("<|endoftext|>")
        self.eos_id = int(lm.eos_token_id if eos is None else eos)
        rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(config.seed), 7))
        base = base_prefix(decoder, encode(model.tokenizer, BASE_PREFIX_TEXT), config.prefix_len)
        embedding = TerrainEmbedding(
            len(config.terrains),
            config.prefix_len,
            lm.d_model,
            config.profile_points + 4,
            config.encoder_hidden,
            base,
            rngs=rngs,
        )
        policy = Policy(decoder, embedding, ValueHead(lm.d_model, config.encoder_hidden, rngs=rngs))
        wanted = (
            nnx.Param
            if config.train_lm
            else nnx.All(nnx.Param, nnx.Not(nnx.PathContains("decoder")))
        )
        self.graph, self.initial, self.frozen = nnx.split(policy, wanted, ...)
        self.ref_graph, self.ref_state = nnx.split(decoder)
        self.prompt = jnp.asarray(prompt_ids, jnp.int32)
        self.tx = optax.chain(
            optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.learning_rate)
        )
        self.profiles = np.stack(
            [terrain_profile(t, config.profile_points) for t in config.terrains]
        )
        self.sample = jax.jit(self._sample)
        self.ref_sample = jax.jit(self._ref_sample, static_argnames=("rows",))
        self.score = jax.jit(self._score)
        self.ref_score = jax.jit(self._ref_score)
        self.update = jax.jit(self._update)

    def merge(self, params: Any) -> Policy:
        return nnx.merge(self.graph, params, self.frozen)

    def rows(self, conditioning: np.ndarray) -> tuple[jax.Array, jax.Array]:
        """(terrain index, profile) arrays for rows conditioned on terrain indices."""
        conditioning = np.asarray(conditioning, np.int32)
        return jnp.asarray(conditioning), jnp.asarray(self.profiles[conditioning])

    def _sample(self, params: Any, index: jax.Array, profile: jax.Array, key: jax.Array) -> Any:
        pol = self.merge(params)
        prefix = pol.embedding(index, profile)
        return sample_actions(
            pol.decoder, prefix, self.prompt, key, self.config.temperature,
            rows=index.shape[0], max_new=self.config.max_new_tokens, eos_id=self.eos_id,
        )  # fmt: skip

    def _ref_sample(self, ref_state: Any, key: jax.Array, rows: int) -> Any:
        decoder = nnx.merge(self.ref_graph, ref_state)
        return sample_actions(
            decoder, None, self.prompt, key, self.config.temperature,
            rows=rows, max_new=self.config.max_new_tokens, eos_id=self.eos_id,
        )  # fmt: skip

    def _score(self, params: Any, index: jax.Array, profile: jax.Array, actions: jax.Array) -> Any:
        pol = self.merge(params)
        prefix = pol.embedding(index, profile)
        return score_actions(
            pol.decoder, prefix, self.prompt, actions, self.config.temperature, pol.value
        )

    def _ref_score(self, ref_state: Any, actions: jax.Array) -> jax.Array:
        decoder = nnx.merge(self.ref_graph, ref_state)
        return score_actions(decoder, None, self.prompt, actions, self.config.temperature)[0]

    def _update(self, params: Any, opt_state: Any, batch: dict[str, jax.Array]) -> Any:
        c = self.config

        def loss_fn(p: Any) -> tuple[jax.Array, ppo.LossParts]:
            logp, entropy, values = self._score(
                p, batch["index"], batch["profile"], batch["actions"]
            )
            parts = ppo.ppo_loss(
                logp, batch["old_logp"], batch["advantages"], values, batch["old_values"],
                batch["returns"], entropy, batch["mask"], c.clip, c.value_clip, c.value_coef,
            )  # fmt: skip
            return parts.total, parts

        (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
        return params, opt_state, parts, optax.tree.norm(grads), finite


def finish_programs(
    tokenizer: Any,
    prompt: str,
    tokens: np.ndarray,
    mask: np.ndarray,
    stop: tuple[str, ...],
    eos_id: int,
) -> tuple[list[str], np.ndarray]:
    """Program texts (prompt + completion, cut at the first stop string; the EOS token ends
    the action but is not text) and the action mask cut to the tokens that wrote the kept
    text (so the log-prob is that of the program that runs)."""
    from elmjax.lm.tokenizer import decode

    texts, out = [], mask.copy()
    for r in range(tokens.shape[0]):
        n = int(mask[r].sum())
        ids = [int(t) for t in tokens[r, :n]]
        if ids and ids[-1] == eos_id:
            ids = ids[:-1]
            n -= 1
        text = decode(tokenizer, ids)
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
        if cut >= 0:
            lo, hi = 1, n  # the fewest tokens whose text reaches the stop string
            while lo < hi:
                mid = (lo + hi) // 2
                if len(decode(tokenizer, ids[:mid])) > cut:
                    hi = mid
                else:
                    lo = mid + 1
            out[r, lo:] = False
            text = text[:cut]
        texts.append(program_head(prompt) + text)
    return texts, out


def program_head(prompt: str) -> str:
    """The part of the prompt that is program text: after the last `<BEF> ` marker of the
    paper's diff format (elm-tiny-derived models), else the whole prompt."""
    return prompt.rsplit("<BEF> ", 1)[-1]


def evaluate_rows(
    texts: list[str],
    conditioning: np.ndarray,
    terrains: tuple[str, ...],
    config: RLConfig,
    ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """Each row's program scored on its conditioning terrain: (distance toward the goal [B],
    ran-and-valid [B], results), through `evaluate_programs` (one batch per terrain)."""
    from elmjax.sodarace.env import Sodarace
    from elmjax.sodarace.params import SimParams

    distance = np.zeros(len(texts), np.float32)
    ok = np.zeros(len(texts), bool)
    results: list[Any] = [None] * len(texts)
    for t, name in enumerate(terrains):
        rows = np.flatnonzero(conditioning == t)
        if not len(rows):
            continue
        env = Sodarace(name, SimParams(seconds=config.seconds))
        out = evaluate_programs(
            [texts[r] for r in rows], env, seed=0, run_seed=config.seed,
            program_ids=[int(ids[r]) for r in rows],
        )  # fmt: skip
        for r, res in zip(rows, out):
            results[r] = res
            ok[r] = res.ok
            distance[r] = res.fitness if res.ok else 0.0
    return distance, ok, results


def _checkpoint_manager(path: Path, keep: int) -> Any:
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        os.path.abspath(path), options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    )


@dataclasses.dataclass
class TrainState:
    params: Any
    opt_state: Any
    step: int  # PPO steps completed
    rollbacks: int  # non-finite steps rolled back so far (enters the keys)


class Checkpoints:
    """Orbax checkpoints of the trained state, keyed by step."""

    def __init__(self, path: Path, keep: int) -> None:
        self.manager = _checkpoint_manager(path, keep)

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState) -> None:
        import orbax.checkpoint as ocp

        tree = {"params": state.params, "opt_state": state.opt_state}
        payload = {
            "state": dict(zip(leaf_names(tree), jax.tree.leaves(tree))),
            "step": np.asarray(state.step, np.int64),
            "rollbacks": np.asarray(state.rollbacks, np.int64),
        }
        self.manager.save(state.step, args=ocp.args.StandardSave(payload), force=True)
        self.manager.wait_until_finished()

    def restore(self, template: TrainState, step: int | None = None) -> TrainState:
        import orbax.checkpoint as ocp

        step = self.latest() if step is None else step
        tree = {"params": template.params, "opt_state": template.opt_state}
        leaves, treedef = jax.tree.flatten(tree)
        names = leaf_names(tree)
        target = {
            "state": dict(zip(names, leaves)),
            "step": np.zeros((), np.int64),
            "rollbacks": np.zeros((), np.int64),
        }
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        got = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        tree = jax.tree.unflatten(treedef, [jnp.asarray(got["state"][n]) for n in names])
        return TrainState(
            tree["params"], tree["opt_state"], int(got["step"]), int(got["rollbacks"])
        )

    def close(self) -> None:
        self.manager.close()


class Trainer:
    """The PPO loop of one run directory (see module docstring)."""

    def __init__(self, path: Path, config: RLConfig, model: Any, prompt: str) -> None:
        from elmjax.lm.tokenizer import encode
        from elmjax.run_dir import MetricsLog

        self.path, self.config, self.model, self.prompt = path, config, model, prompt
        self.fn = PolicyFunctions(model, config, encode(model.tokenizer, prompt))
        self.checkpoints = Checkpoints(path / "checkpoints", config.keep_checkpoints)
        self.metrics = MetricsLog(path, tensorboard=True)
        self.faults = _fault_steps()
        self.conditioning = np.repeat(np.arange(len(config.terrains)), config.samples_per_terrain)

    def initial_state(self) -> TrainState:
        params = self.fn.initial
        return TrainState(params, self.fn.tx.init(params), 0, 0)

    def restore_or_start(self) -> TrainState:
        template = self.initial_state()
        if self.checkpoints.latest() is None:
            return template
        state = self.checkpoints.restore(template)
        self._truncate_metrics(state.step)
        return state

    def _truncate_metrics(self, step: int) -> None:
        from elmjax.run_dir import read_metrics

        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        (self.path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def keys(self, state: TrainState) -> tuple[jax.Array, jax.Array]:
        key = jax.random.fold_in(jax.random.key(self.config.seed), state.step + 1)
        key = jax.random.fold_in(key, state.rollbacks)
        return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)

    def step(self, state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """One PPO iteration from `state` (raises Diverged on a non-finite result)."""
        c, fn = self.config, self.fn
        t0 = time.perf_counter()
        k_sample, k_perm = self.keys(state)
        index, profile = fn.rows(self.conditioning)
        tokens, mask = jax.device_get(fn.sample(state.params, index, profile, k_sample))
        texts, mask = finish_programs(
            self.model.tokenizer, self.prompt, tokens, mask, c.stop, fn.eos_id
        )
        t1 = time.perf_counter()
        ids = state.step * c.batch + np.arange(c.batch)
        distance, ok, _ = evaluate_rows(texts, self.conditioning, c.terrains, c, ids)
        t2 = time.perf_counter()
        score = np.asarray(ppo.program_scores(distance, ok, c.reward_scale, c.invalid_penalty))
        if state.step + 1 in self.faults and state.rollbacks == 0:
            score = score.copy()
            score[0] = np.nan  # injected (FAULT_ENV): a diverging reward
        actions, m = jnp.asarray(tokens), jnp.asarray(mask)
        old_logp, _, old_values = fn.score(state.params, index, profile, actions)
        ref_logp = fn.ref_score(fn.ref_state, actions)
        rewards = ppo.token_rewards(jnp.asarray(score), m, old_logp, ref_logp, c.kl_coef)
        advantages, returns = ppo.gae(rewards, old_values, m, c.gamma, c.lam)
        advantages = ppo.whiten(advantages, m)
        batch = {
            "index": index, "profile": profile, "actions": actions, "mask": m,
            "old_logp": old_logp, "old_values": old_values, "advantages": advantages,
            "returns": returns,
        }  # fmt: skip
        params, opt_state = state.params, state.opt_state
        size = c.batch // c.minibatches
        parts_log, norms, finite = [], [], bool(np.all(np.isfinite(score)))
        for epoch in range(c.epochs):
            perm = np.asarray(jax.random.permutation(jax.random.fold_in(k_perm, epoch), c.batch))
            for k in range(c.minibatches):
                rows = perm[k * size : (k + 1) * size]
                mb = {name: v[rows] for name, v in batch.items()}
                params, opt_state, parts, norm, ok_params = fn.update(params, opt_state, mb)
                parts_log.append(parts)
                norms.append(norm)
                finite = finite and bool(ok_params) and bool(jnp.isfinite(parts.total))
        if not finite:
            raise Diverged(f"step {state.step + 1}: non-finite reward, loss or parameters")
        t3 = time.perf_counter()
        kl = float(ppo.masked_mean(old_logp - ref_logp, m) * 1.0)
        last = parts_log[-1]
        row: dict[str, Any] = {
            "step": state.step + 1,
            "evaluations": (state.step + 1) * c.batch,
            "reward": float(np.mean(score)),
            "distance": float(np.mean(distance)),
            "valid": float(np.mean(ok)),
            "kl_to_stage2": kl,
            "tokens": float(np.mean(mask.sum(1))),
            "loss": float(last.total),
            "policy_loss": float(last.policy),
            "value_loss": float(last.value),
            "entropy": float(last.entropy),
            "approx_kl": float(last.approx_kl),
            "clip_fraction": float(last.clip_fraction),
            "grad_norm": float(norms[-1]),
            "rollbacks": state.rollbacks,
            "time": {"sample": t1 - t0, "evaluate": t2 - t1, "update": t3 - t2},
        }
        for t, name in enumerate(c.terrains):
            sel = self.conditioning == t
            row[f"distance/{name}"] = float(np.mean(distance[sel]))
            row[f"valid/{name}"] = float(np.mean(ok[sel]))
        return TrainState(params, opt_state, state.step + 1, state.rollbacks), row

    def train(self, state: TrainState) -> TrainState:
        """Steps until `config.steps` (a total), checkpointing and rolling back as configured."""
        c = self.config
        if self.checkpoints.latest() is None:
            self.checkpoints.save(state)  # step 0: what a rollback before any step returns to
        streak = 0
        while state.step < c.steps:
            try:
                new, row = self.step(state)
            except Diverged as err:
                streak += 1
                rollbacks = state.rollbacks + 1
                state = self.checkpoints.restore(state)
                state = dataclasses.replace(state, rollbacks=rollbacks)
                self._truncate_metrics(state.step)
                note = {"rollback": str(err), "to_step": state.step, "rollbacks": rollbacks,
                        "evaluations": state.step * c.batch, "step": state.step}  # fmt: skip
                self.metrics.write(note)
                print(f"rl: {err}; rolled back to step {state.step}", file=sys.stderr)
                if streak > c.max_rollbacks:
                    raise
                continue
            streak = 0
            state = new
            self.metrics.write(row)
            if c.progress:
                print(
                    f"rl step {state.step}/{c.steps}  reward {row['reward']:+.3f}  "
                    f"valid {row['valid']:.0%}  kl {row['kl_to_stage2']:.3f}  "
                    f"({sum(row['time'].values()):.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            if state.step % c.checkpoint_every == 0 or state.step == c.steps:
                self.checkpoints.save(state)
        return state

    def close(self) -> None:
        self.metrics.close()
        self.checkpoints.close()
