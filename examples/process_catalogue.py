"""Process the shipped catalogue from Python and print what happened to each image.

Run from anywhere: ``python examples/process_catalogue.py [OUT.csv]``. It needs no network and
no services; state and outputs go under ``BULKRESIZE_DATA_DIR`` (default ``./bulkresize-data``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import bulkresize

HERE = Path(__file__).resolve().parent


def main() -> int:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("products-output.csv")
    settings = bulkresize.Settings.from_env()
    try:
        report = bulkresize.process_csv(
            HERE / "products.csv", output, settings=settings, quality=50, max_width=1200
        )
    except bulkresize.errors.ValidationFailed as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    print(f"request {report.request_id}: {report.status}")
    print(
        f"{report.processed_images} of {report.total_images} images, {report.failed_images} failed"
    )
    print(f"output CSV: {output} (also stored at {report.output_csv_url})")
    with bulkresize.Pipeline.from_settings(settings) as pipeline:
        for image in pipeline.images(report.request_id):
            result = pipeline.output_url(image) or f"{image.error}: {image.error_message}"
            print(f"  row {image.row}, image {image.position}: {image.input_url} -> {result}")
    return 0 if report.status is bulkresize.RequestStatus.COMPLETED else 1


if __name__ == "__main__":
    sys.exit(main())
