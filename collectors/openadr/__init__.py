"""The site's gateway to its utility: an OpenADR 2.0b VEN whose events become signed demand-response requests on
pp.grid (`powerplane dr gateway`; README.md beside this file)."""
