"""Dynamic int8 LSTM: quantize_dynamic of a gatedrnn.LSTM vs of an nn.LSTM with the same weights (and both
float layers), median of 15 interleaved runs in one process, one thread. Prints one JSON object (milliseconds).

    python benchmarks/quantized_lstm.py
"""
import time, statistics, warnings, json, torch
from torch import nn
warnings.simplefilter("ignore")
import gatedrnn
from torch.ao.quantization import quantize_dynamic
torch.set_num_threads(1)
torch.manual_seed(0)
out = {}
for (B, T, I, H) in [(1, 100, 64, 64), (16, 100, 64, 128)]:
    ours = gatedrnn.LSTM(I, H).eval(); theirs = nn.LSTM(I, H).eval()
    theirs.load_state_dict(ours.state_dict())
    q_ours = quantize_dynamic(nn.ModuleDict({"r": ours}), {gatedrnn.LSTM})["r"]
    q_theirs = quantize_dynamic(nn.ModuleDict({"r": theirs}), {nn.LSTM})["r"]
    x = torch.randn(T, B, I)
    with torch.no_grad():
        assert torch.equal(q_ours(x)[0], q_theirs(x)[0])
        fns = {"gatedrnn_int8": lambda: q_ours(x), "torch_int8": lambda: q_theirs(x),
               "gatedrnn_float": lambda: ours(x), "torch_float": lambda: theirs(x)}
        for f in fns.values():
            for _ in range(3): f()
        times = {k: [] for k in fns}
        for _ in range(15):
            for k, f in fns.items():
                t = time.perf_counter(); f(); times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    med["ratio_int8_ours_over_torch"] = med["gatedrnn_int8"] / med["torch_int8"]
    out[f"B{B}_T{T}_I{I}_H{H}"] = med
    print((B, T, I, H), {k: round(v, 3) for k, v in med.items()}, flush=True)
print(json.dumps(out))
