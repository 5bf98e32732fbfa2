"""CuRL-VPR rewards: a pure scoring core, TRL reward functions and the accuracy gate.

See ``docs/rewards.md`` in the repository. Typical use::

    from cxmind.rewards import score
    score(completion, solution, "closed").outcome
"""

from cxmind.rewards.functions import (
    COMPONENTS,
    DEFAULT_REWARD_WEIGHTS,
    CuRLReward,
    completion_text,
    curl_vpr_reward_funcs,
)
from cxmind.rewards.gate import ConditionalGate
from cxmind.rewards.scoring import MODES, RewardScores, combine, score
from cxmind.rewards.similarity import similarity

format_reward, outcome_reward, think_reward, process_reward = curl_vpr_reward_funcs()

__all__ = [
    "COMPONENTS",
    "DEFAULT_REWARD_WEIGHTS",
    "MODES",
    "ConditionalGate",
    "CuRLReward",
    "RewardScores",
    "combine",
    "completion_text",
    "curl_vpr_reward_funcs",
    "format_reward",
    "outcome_reward",
    "process_reward",
    "score",
    "similarity",
    "think_reward",
]
