"""The app's upload limits, in one place for the app and for ``essence app`` (no Streamlit, no CLI here).

``essence app`` gives Streamlit :data:`UPLOAD_LIMIT_MB` as ``server.maxUploadSize``; the app checks the same
figure itself (:mod:`essence.app.uploads`), because Streamlit's test harness and other servers do not enforce
the server option.
"""

MB = 1024 * 1024  # Streamlit's server.maxUploadSize counts megabytes of 2**20 bytes
# Every uploaded file (MB): a ResNet-50 state_dict (~100 MB) fits twice over; larger belongs on the CLI.
UPLOAD_LIMIT_MB = 200
UPLOAD_LIMIT = UPLOAD_LIMIT_MB * MB
# A zip of PNG/JPEG images barely compresses; 4× the upload limit leaves room for BMP/TIFF trees while
# refusing a zip bomb long before it fills the disk.
EXTRACT_LIMIT_MB = 4 * UPLOAD_LIMIT_MB
# Members of one dataset zip: a generous image folder, far below what would exhaust inodes or memory.
MAX_MEMBERS = 100_000
