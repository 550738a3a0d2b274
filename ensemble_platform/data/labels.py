"""A target's values as text, the same however they were read."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

_WHOLE_NUMBER_TEXT = re.compile(r"([+-]?)(\d+)\.0*")


def label_text(value: object) -> object:
    """A label as text: a whole number without a decimal part, whether it came as 1, 1.0 or "1.0" (pandas
    reads a 0/1 column with a blank cell as 0.0/1.0, and a spec's `positive_label: 1.0` as text), anything
    else `str`. Missing (None, NaN) stays as it is. Only labels: category levels are compared as the
    members' encoders learned them, which this must not change."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return value
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    text = str(value)
    whole = _WHOLE_NUMBER_TEXT.fullmatch(text)
    if whole:
        sign, digits = whole.groups()
        return ("-" if sign == "-" and digits.strip("0") else "") + digits
    return text
