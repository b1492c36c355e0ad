"""A rule-based reward: does the completion mention given keywords? Useful for smoke tests and quickstarts."""

from __future__ import annotations

from trl_ext.rewards.completions import completion_text


class KeywordReward:
    """Reward 1.0 for a completion that contains any of `keywords` (case-insensitive), else 0.0.

    Args:
        keywords (`list[str]` or `str`, *optional*, defaults to `"river"`):
            Words or phrases; one is enough for the reward.

    Example:
        >>> reward = KeywordReward(keywords=["river"])
        >>> reward(prompts=["Where?"], completions=["By the Ashen river.", "No idea."])
        [1.0, 0.0]
    """

    def __init__(self, keywords: list[str] | str = "river"):
        self.keywords = [keywords] if isinstance(keywords, str) else list(keywords)
        if not self.keywords:
            raise ValueError("KeywordReward needs at least one keyword.")
        self._lowered = [k.lower() for k in self.keywords]
        self.__name__ = "keyword_reward"

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        return [1.0 if any(k in completion_text(c).lower() for k in self._lowered) else 0.0 for c in completions]
