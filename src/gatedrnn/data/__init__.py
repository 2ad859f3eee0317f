"""Real data sets read from files shipped inside installed packages (one module each); nothing downloads.

A missing package raises DataUnavailableError naming the pip extra; a damaged file raises CorruptDataError
naming the file, the line and what was expected. Every loader takes an optional `path` to read another copy.
"""
from gatedrnn.data._locate import CorruptDataError, DataUnavailableError
from gatedrnn.data.chorales import Chorales, load_chorales, split_chorales
from gatedrnn.data.japanese_vowels import load_japanese_vowels
from gatedrnn.data.kjv import load_kjv_text
from gatedrnn.data.sunspots import MonthlySeries, load_monthly_sunspots
from gatedrnn.data.ts_format import TsDataset, read_ts

__all__ = ["Chorales", "CorruptDataError", "DataUnavailableError", "MonthlySeries", "TsDataset", "load_chorales",
           "load_japanese_vowels", "load_kjv_text", "load_monthly_sunspots", "read_ts", "split_chorales"]
