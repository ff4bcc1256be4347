"""Parts of the send benchmark (bench/send.py): profiles, SMTP servers, send worker, blast."""
