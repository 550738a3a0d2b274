"""Sensors: re-validate when a member model gets a new version; take in data batches from the
inbox; retrain when a batch drifts. Their decisions are made by `ensemble_platform.automation`."""

import json
import os

import dagster as dg

from ensemble_platform.automation.member_watch import MemberWatch
from ensemble_platform.defs.jobs import revalidation_job
from ensemble_platform.defs.resources import PlatformResource
from ensemble_platform.settings import AUTOMATION_ENV, DATASET_TAG

TRIGGER_TAG = "ensemble_platform/trigger"


def sensor_status() -> dg.DefaultSensorStatus:
    """Running (the daemon of `make ui` evaluates them) unless automation is switched off."""
    off = os.environ.get(AUTOMATION_ENV, "").lower() == "off"
    return dg.DefaultSensorStatus.STOPPED if off else dg.DefaultSensorStatus.RUNNING


@dg.sensor(job=revalidation_job, minimum_interval_seconds=60, default_status=sensor_status(),
           description="A member model got a version the dataset's current ensemble config does not use: "
                       "re-validate with it (new MINOR candidate). Never touches production.")
def member_version_sensor(context: dg.SensorEvaluationContext, platform: PlatformResource) -> dg.SensorResult:
    result = MemberWatch(platform.paths, platform.registry()).tick(json.loads(context.cursor or "{}"))
    for reason in result.skipped:
        context.log.warning(reason)
    requests = [
        dg.RunRequest(
            run_key=request.run_key,
            run_config={"ops": {"oof_predictions": {"config": {"member_versions": request.member_versions}}}},
            tags={DATASET_TAG: request.spec_path, TRIGGER_TAG: "member_version",
                  "ensemble_platform/new_member_versions": json.dumps(request.new_versions, sort_keys=True)},
        )
        for request in result.requests
    ]
    skip = None if requests else ("; ".join(result.skipped) or "no member version newer than the current configs")
    return dg.SensorResult(run_requests=requests, skip_reason=skip, cursor=json.dumps(result.cursor, sort_keys=True))


SENSORS = [member_version_sensor]
