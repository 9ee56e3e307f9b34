"""scripts/bench_report.py: docs/PERFORMANCE.md from bench.sh's outputs."""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

REPORT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..",
                      "scripts", "bench_report.py")


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def meta(command, load, exit_code, cores=2, machine=""):
    return (f"command: {command}\ndate: 2026-12-01T12:00:00Z\n"
            f"load: {load}\nmachine: {machine}\ncpu: AMD EPYC\n"
            f"cores: {cores}\ngpu: none\ncommit: abc1234\nquick: 1\n"
            f"exit: {exit_code}\nseconds: 12\n")


class BenchReportTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.out = os.path.join(self.dir, "PERFORMANCE.md")
        r = self.dir
        write(f"{r}/codec_bench.meta",
              meta("build/bench/codec_bench --dims 64", "9.26 10.00 10.97",
                   0, machine="2-core dev VM"))
        write(f"{r}/codec_bench.txt", "D     method\n64    fp16   1.0\n")
        write(f"{r}/codec_bench.err", "[D=64] fp16: encode/decode\n")
        write(f"{r}/kv_service_bench.meta",
              meta("build/bench/kv_service_bench --quick", "0.50 0.40 0.30",
                   1))
        write(f"{r}/kv_service_bench.txt", "model format\n")
        write(f"{r}/kv_service_bench.err",
              "progress\r[1] row\ncannot start vqkv-server or redis-server\n")
        write(f"{r}/cuda_codec_bench.meta",
              meta("build/bench/cuda_codec_bench", "0.1 0.1 0.1", 77))
        write(f"{r}/cuda_codec_bench.txt", "")
        write(f"{r}/cuda_codec_bench.err",
              "cuda_codec_bench: skipped: no CUDA device\n")

    def tearDown(self):
        shutil.rmtree(self.dir)

    def render(self, *flags):
        subprocess.run([sys.executable, REPORT, *flags, self.dir, self.out],
                       check=True, capture_output=True, text=True)
        with open(self.out, encoding="utf-8") as f:
            return f.read()

    def section(self, doc, name):
        start = doc.index(f"## {name}\n")
        end = doc.find("\n## ", start + 1)
        return doc[start:end if end >= 0 else len(doc)]

    def test_table_machine_date_and_load_of_a_run(self):
        s = self.section(self.render("--quick"), "codec_bench")
        self.assertIn("Peer: faiss", s)
        self.assertIn("- command: `build/bench/codec_bench --dims 64`", s)
        self.assertIn("2-core dev VM: AMD EPYC, 2 cores; GPU: none", s)
        self.assertIn("2026-12-01T12:00:00Z (commit abc1234)", s)
        self.assertIn("9.26, 10.00, 10.97 (1, 5, 15 min)", s)
        self.assertIn("```text\nD     method\n64    fp16   1.0\n```", s)
        self.assertIn("status: ok, 12 s", s)

    def test_loaded_machine_is_called_out(self):
        doc = self.render("--quick")
        intro = doc[:doc.index("## ")]
        self.assertIn("taken on a loaded machine", intro)
        self.assertIn("1 of 3 benchmarks", intro)
        self.assertIn("(codec_bench)", intro)
        self.assertIn("`scripts/bench.sh`", intro)
        self.assertIn("a noisy run", self.section(doc, "codec_bench"))
        self.assertNotIn("a noisy run", self.section(doc, "kv_service_bench"))

    def test_idle_machine_has_no_warning(self):
        os.remove(f"{self.dir}/codec_bench.meta")
        doc = self.render()
        self.assertNotIn("loaded machine", doc)
        self.assertIn("`scripts/bench.sh` (each benchmark's documented "
                      "default)", doc)

    def test_failure_shows_its_stderr_not_a_table_of_numbers(self):
        s = self.section(self.render(), "kv_service_bench")
        self.assertIn("status: failed (exit 1)", s)
        self.assertIn("cannot start vqkv-server or redis-server", s)
        self.assertIn("What it printed before failing", s)

    def test_skips_are_not_noisy_runs(self):
        write(f"{self.dir}/cuda_codec_bench.meta",
              meta("build/bench/cuda_codec_bench", "9.0 9.0 9.0", 77))
        write(f"{self.dir}/vq_fit_bench.meta",
              meta("build/bench/vq_fit_bench", "9.0 9.0 9.0", "not built"))
        doc = self.render()
        self.assertIn("1 of 4 benchmarks", doc)
        self.assertNotIn("a noisy run", self.section(doc, "cuda_codec_bench"))
        self.assertIn("status: not built", self.section(doc, "vq_fit_bench"))

    def test_skip_gives_the_reason(self):
        s = self.section(self.render(), "cuda_codec_bench")
        self.assertIn("status: skipped", s)
        self.assertIn("Why: cuda_codec_bench: skipped: no CUDA device", s)
        self.assertNotIn("```", s)

    def test_benchmarks_without_results_say_how_to_run_them(self):
        doc = self.render("--quick")
        s = self.section(doc, "client_bench")
        self.assertIn("`scripts/bench.sh --quick client_bench`", s)
        self.assertIn("| [client_bench](#client_bench) | not run |", doc)
        self.assertIn("| [codec_bench](#codec_bench) | ok | "
                      "2026-12-01T12:00:00Z |", doc)
        # Every benchmark has its section, in the fixed order.
        names = ["codec_bench", "vq_fit_bench", "code_attention_bench",
                 "kv_service_bench", "store_scale_bench", "cluster_bench",
                 "client_bench", "cuda_codec_bench"]
        positions = [doc.index(f"## {n}\n") for n in names]
        self.assertEqual(positions, sorted(positions))

    def test_curves_are_drawn_next_to_the_report(self):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.skipTest("no matplotlib (scripts/setup.sh installs it)")
        r = self.dir
        write(f"{r}/code_attention_bench.meta",
              meta("build/bench/code_attention_bench", "0.1 0.1 0.1", 0))
        write(f"{r}/code_attention_bench.txt",
              "| tokens | codes ms | decode+attend ms | exact fp32 ms |\n"
              "|---:|---:|---:|---:|\n"
              "| 1024 | 0.98 (0.97) | 2.37 (2.36) | 0.12 (0.12) |\n"
              "| 4096 | 1.70 (1.70) | 9.66 (9.66) | 0.66 (0.66) |\n")
        # One size only: no curve to draw, so no plot.
        write(f"{r}/store_scale_bench.meta",
              meta("build/bench/store_scale_bench", "0.1 0.1 0.1", 0))
        write(f"{r}/store_scale_bench.txt",
              "store blocks put/s ...\n"
              "hash map 1000 1186012 0.12 4.77 0.06 0.10 0.20 0.29 1206 181\n"
              "TieredStore 1000 507053 1.55 6.57 0.18 0.71 1.10 1.75 1281 "
              "257\n")
        doc = self.render()
        png = os.path.join(r, "performance_code_attention_bench.png")
        with open(png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertIn("![code_attention_bench]"
                      "(performance_code_attention_bench.png)",
                      self.section(doc, "code_attention_bench"))
        self.assertFalse(os.path.exists(
            os.path.join(r, "performance_store_scale_bench.png")))
        self.assertNotIn(".png", self.section(doc, "store_scale_bench"))
        # A failed run draws nothing.
        self.assertNotIn(".png", self.section(doc, "kv_service_bench"))

    def test_missing_results_directory_is_an_error(self):
        p = subprocess.run([sys.executable, REPORT, self.dir + "/nope",
                            self.out], capture_output=True, text=True)
        self.assertEqual(p.returncode, 2)
        self.assertFalse(os.path.exists(self.out))


if __name__ == "__main__":
    unittest.main()
