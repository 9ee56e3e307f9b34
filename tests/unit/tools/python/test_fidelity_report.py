"""scripts/fidelity_report.py: tables from `vqkv --json` lines, in place."""
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

REPORT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..",
                      "scripts", "fidelity_report.py")


def ppl(codec, text, change_ppl, fp16_ppl, tokens, bits, codebooks="",
        descriptor=None):
    return {"task": "ppl", "codec": codec, "descriptor": descriptor or codec,
            "codebooks": codebooks, "text": f"/t/{text}.txt", "ctx": 2048,
            "window": 256, "sinks": 4, "windows": 1, "tokens_scored": tokens,
            "ppl": change_ppl, "ppl_fp16": fp16_ppl,
            "ppl_change_pct": 100 * (change_ppl / fp16_ppl - 1),
            "top1_agreement": 0.95, "kl": 0.02, "bits_per_element": bits}


def passkey(codec, descriptor, codebooks, bits, correct, fp16_correct):
    return {"task": "passkey", "codec": codec, "descriptor": descriptor,
            "codebooks": codebooks, "bits_per_element": bits,
            "length": 1024, "trials": 12, "seed": 5, "window": 256,
            "sinks": 4, "correct": correct, "fp16_accuracy": fp16_correct / 12,
            "coded_trials": 12, "correct_coded": correct,
            "fp16_accuracy_coded": fp16_correct / 12}


class FidelityReportTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        vq = "vq:k=14+14x10:cb=272b:ks=64"
        lines = [
            ppl("vq", "frankenstein", 30.0, 27.0, 1000, 3.375,
                "/x/default.vqcb", vq),
            ppl("vq", "sherlock_holmes", 26.0, 26.0, 3000, 3.375,
                "/x/default.vqcb", vq),
            ppl("kivi2", "frankenstein", 28.0, 27.0, 1000, 3.0),
            ppl("vq", "frankenstein", 28.0, 27.0, 1000, 3.04,
                "/x/default.vqcb", vq + "@16"),
            passkey("fp16", "fp16", "", 16, 12, 12),
            passkey("vq", vq, "/x/default.vqcb", 3.375, 9, 12),
            {"task": "calibration_size", "tokens": 4096, "all_points": True,
             "sample": 12288, "layers": [0, 15, 29], "holdout_tokens": 8192,
             "key_train": 0.01, "key_holdout": 0.0234, "value_train": 0.2,
             "value_holdout": 0.3, "fit_seconds": 12.0},
        ]
        with open(os.path.join(self.dir, "a.jsonl"), "w") as f:
            f.write("\n".join(json.dumps(x) for x in lines) + "\n")
        with open(os.path.join(self.dir, "machine.txt"), "w") as f:
            f.write("date: 2026-12-01\ncommit: abc\n")

    def run_report(self, *args):
        return subprocess.run([sys.executable, REPORT, self.dir, *args],
                              check=True, capture_output=True,
                              text=True).stdout

    def test_tables(self):
        out = self.run_report()
        # Pooled over texts, token-weighted in log space: 1000 tokens at
        # 30/27, 3000 at 26/26.
        pooled = 100 * (math.exp(0.25 * math.log(30 / 27)) - 1)
        self.assertIn(f"**{pooled:+.2f}%**", out)
        self.assertIn("| vq default + 64-bit key sketch | 3.375 |", out)
        self.assertIn("| vq default + 64-bit key sketch on layers 16+ | 3.040 |",
                      out)
        self.assertIn("+11.11%", out)  # frankenstein alone
        # 9 of 12 with its Wilson interval, fp16 12 of 12.
        self.assertIn("9/12 [47, 91]% (9/12)", out)
        self.assertIn("12/12 [76, 100]% (12/12)", out)
        self.assertIn("| 4096 | all | 12288 | 0.0100 | 0.0234 |", out)
        self.assertIn("date: 2026-12-01; commit: abc", out)

    def test_fit_table_joins_time_error_ppl_and_retrieval(self):
        # Only one fit so far: no table.
        self.assertNotIn("k-means against SimVQ", self.run_report())
        sv = "vq:k=10+10x10:cb=5151"
        lines = [
            {"task": "calibrate", "codebooks": "default", "fit": "kmeans",
             "seconds": 250, "cores": 2},
            {"task": "calibrate", "codebooks": "simvq", "fit": "simvq",
             "seconds": 255, "cores": 2},
            {"task": "calibration_size", "fit": "kmeans", "tokens": 16384,
             "all_points": True, "sample": 49152, "layers": [15],
             "holdout_tokens": 8192, "key_train": 0.002,
             "key_holdout": 0.0054, "value_train": 0.02,
             "value_holdout": 0.0609, "fit_seconds": 7.0},
            {"task": "calibration_size", "fit": "simvq", "tokens": 16384,
             "all_points": True, "sample": 49152, "layers": [15],
             "holdout_tokens": 8192, "key_train": 0.005,
             "key_holdout": 0.0072, "value_train": 0.05,
             "value_holdout": 0.0726, "fit_seconds": 8.0},
            ppl("vq", "frankenstein", 27.27, 27.0, 1000, 2.74,
                "/x/simvq.vqcb", sv),
            passkey("vq", sv, "/x/simvq.vqcb", 2.74, 7, 12),
        ]
        with open(os.path.join(self.dir, "b.jsonl"), "w") as f:
            f.write("\n".join(json.dumps(x) for x in lines) + "\n")
        out = self.run_report()
        self.assertIn("### The codebook fit: k-means against SimVQ", out)
        # SimVQ: its time, its study row's held-out error, +1.00% on the one
        # text, top-1 0.95, 7 of 12 passkeys.
        self.assertIn("| simvq | SimVQ | 2.740 | 255 | 0.0072 | 0.0726 | "
                      "+1.00% | 0.950 | 7/12 |", out)
        # k-means: the default set's rows (sketch on every layer and on
        # 16+ are other labels, so no perplexity of its own here).
        self.assertIn("| default | k-means | - | 250 | 0.0054 | 0.0609 |",
                      out)
        self.assertIn("| SimVQ | 16384 | all | 49152 |", out)

    def test_rewrites_only_the_generated_section(self):
        doc = os.path.join(self.dir, "doc.md")
        with open(doc, "w") as f:
            f.write("# Title\n\nprose before\n")
        self.run_report(doc)  # no markers: appended
        self.run_report(doc)  # markers: replaced, not appended again
        with open(doc) as f:
            text = f.read()
        self.assertTrue(text.startswith("# Title\n\nprose before\n"))
        self.assertEqual(text.count("BEGIN fidelity.sh"), 1)
        self.assertEqual(text.count("### Retrieval: passkey"), 1)

    def test_empty_results_is_an_error(self):
        empty = tempfile.mkdtemp()
        r = subprocess.run([sys.executable, REPORT, empty],
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no JSON lines", r.stderr)


if __name__ == "__main__":
    unittest.main()
