"""The plan stage: parameters, memory, fit, time and cost, base vs instruct, licence, and advice.

Entry points: `plan_model` (will it fit, what will it cost), `advise` (should you fine-tune at
all), `training_plan` (what `tunesmith train` prints, saves as plan.json and sizes batches by).
"""

from tunesmith.plan.advise import Advice, Task, advise
from tunesmith.plan.params import PlanError
from tunesmith.plan.planner import Plan, plan_model

__all__ = ["Advice", "Plan", "PlanError", "Task", "advise", "plan_model"]
