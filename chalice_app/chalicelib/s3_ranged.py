"""A seekable, read-only file over an S3 object, fetched in ranged GETs.

``zipfile`` needs only the end-of-central-directory record and the directory itself to
list a zip, both at the end of the file. Reading through this object, the upload Lambda
judges a multi-gigabyte dataset with a few small requests instead of downloading it.
"""

from __future__ import annotations

import io


class S3RangedFile(io.RawIOBase):
    def __init__(self, s3, bucket: str, key: str, block_size: int = 1 << 20):
        self._s3, self._bucket, self._key = s3, bucket, key
        self._size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        self._position = 0
        self._block_size = block_size
        self._blocks: dict[int, bytes] = {}
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer) -> int:
        end = min(self._position + len(buffer), self._size)
        chunks = []
        position = self._position
        while position < end:
            index = position // self._block_size
            block = self._block(index)
            start = position - index * self._block_size
            piece = block[start : start + (end - position)]
            chunks.append(piece)
            position += len(piece)
        data = b"".join(chunks)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def _block(self, index: int) -> bytes:
        if index not in self._blocks:
            first = index * self._block_size
            last = min(first + self._block_size, self._size) - 1
            response = self._s3.get_object(
                Bucket=self._bucket, Key=self._key, Range=f"bytes={first}-{last}"
            )
            self._blocks[index] = response["Body"].read()
            self.requests += 1
        return self._blocks[index]
