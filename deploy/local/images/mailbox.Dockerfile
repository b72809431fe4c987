# A stand-in for the mailpit image where no registry is reachable (scripts/test-deploy.sh): the project's
# own mailbox (`trialroute mailbox`: an aiosmtpd SMTP sink with a page and /api/messages), which is the
# project image plus the `local` extra, installed from the wheelhouse with the hashed lock file.
# Context: a directory with local.txt (requirements/local.txt) and wheels/.
ARG APP_IMAGE=trialroute:local
FROM ${APP_IMAGE}
USER root
COPY local.txt /tmp/mailbox/local.txt
COPY wheels/ /tmp/mailbox/wheels/
RUN pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /tmp/mailbox/wheels \
        --require-hashes --only-binary=:all: -r /tmp/mailbox/local.txt \
    && rm -rf /tmp/mailbox
USER 10001:10001
ENTRYPOINT ["trialroute", "mailbox"]
CMD ["--help"]
