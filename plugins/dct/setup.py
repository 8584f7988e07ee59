"""The C extension of bulkresize-dct; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "bulkresize_dct._transcode",
            sources=["src/bulkresize_dct/_transcode.c"],
            # libjpeg-turbo's headers: Debian/Ubuntu libjpeg62-turbo-dev (or libjpeg-dev),
            # Fedora libjpeg-turbo-devel, Alpine libjpeg-turbo-dev, Homebrew jpeg-turbo.
            libraries=["jpeg", "m"],
            # -O3: the coefficient loop must be vectorised to beat a pixel decode + encode.
            extra_compile_args=["-O3", "-std=c99"],
        )
    ]
)
