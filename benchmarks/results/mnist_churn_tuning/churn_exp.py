# experiment (2026-12-08): heun_sample with churn, passed in by wrapping diffimage.sample.heun_sample;
# CHURN="S_churn,S_tmin,S_tmax,S_noise"; the other arguments are bench_mnist_fid.py's
import functools, os, sys
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import diffimage.sample as S
from diffcore.samplers import heun_sample
ch, tmin, tmax, sn = (float(v) for v in os.environ["CHURN"].split(","))
S.heun_sample = functools.partial(heun_sample, s_churn=ch, s_tmin=tmin, s_tmax=tmax, s_noise=sn)
import bench_mnist_fid
sys.exit(bench_mnist_fid.main(sys.argv[1:]))
